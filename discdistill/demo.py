"""`discdistill demo`: the mission at small scale, in one command.

Distil the domain's teacher (the shipped one when the plugin ships one) for a few minutes, then sample
the teacher at few and many steps and the student at few steps (and the plugin's fully distilled
student when it ships one), all with the same seed, and print three samples and the domain's metrics
of each row side by side, with the protocol. Nothing here is new machinery: it is `train`, `sample`
and `Domain.metrics` in a row.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from discdistill.checkpoint import load_pretrained, read_pretrained_config
from discdistill.diffusion import LogLinearSchedule
from discdistill.evaluation.entropy import mean_entropy
from discdistill.interfaces import Domain, MaskedDiffusionTeacher
from discdistill.run_settings import RunSettings, run_settings_of
from discdistill.sampling import sample

#: Samples the demo shows per row.
SHOWN = 3


@dataclass
class DemoRow:
    label: str
    steps: int
    texts: list[str]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def demo_row(label: str, model: MaskedDiffusionTeacher, domain: Domain, steps: int, num_samples: int,
             seq_len: int, reference: torch.Tensor, seed: int = 0, run: RunSettings | None = None) -> DemoRow:
    """``num_samples`` ancestral samples at ``steps`` (seed ``seed``), decoded and scored by the domain;
    ``run``: the model's saved run settings (time conditioning, schedule eps)."""
    run = run or RunSettings()
    tic = time.perf_counter()
    with torch.no_grad():
        ids = sample(model, num_samples=num_samples, seq_len=seq_len, steps=steps, mask_id=model.mask_id,
                     schedule=LogLinearSchedule(run.schedule.eps), time_conditioned=run.time_conditioned,
                     generator=torch.Generator().manual_seed(seed), cache=False,
                     forbidden_tokens=domain.forbidden_tokens()).ids
    seconds = time.perf_counter() - tic
    metrics = {"entropy": mean_entropy(list(ids)), **domain.metrics(ids, reference)}
    return DemoRow(label, steps, [str(t) for t in domain.decode_samples(ids)], seconds, metrics)


def render(rows: list[DemoRow], protocol: list[str], width: int = 100) -> str:
    """Three samples of each row, then one table of every metric (reference_* as a last column)."""
    out: list[str] = []
    for row in rows:
        out.append(f"--- {row.label} ({row.steps} denoiser passes) ---")
        for text in row.texts[:SHOWN]:
            out.append(textwrap.fill(text, width, initial_indent="  > ", subsequent_indent="    "))
    names = [k for k in rows[0].metrics if not k.startswith("reference_")]
    reference = {k[len("reference_"):]: v for k, v in rows[0].metrics.items() if k.startswith("reference_")}
    head = ["row", "steps", "seconds", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row.label, str(row.steps), f"{row.seconds:.1f}",
                                         *(f"{row.metrics[n]:.4f}" for n in names)]) + " |")
    if reference:
        lines.append("| " + " | ".join(["held-out real text", "-", "-",
                                         *(f"{reference[n]:.4f}" if n in reference else "-" for n in names)]) + " |")
    return "\n".join([*out, "", *(f"- {p}" for p in protocol), "", *lines])


def run_demo(domain: Domain, rows: list[tuple[str, Path, int]], *, num_samples: int,
             seq_len: int, seed: int = 0, say: Callable[[str], None] = print) -> list[DemoRow]:
    """Score every (label, model directory, steps) row on the same seed; ``say`` reports progress."""
    reference = domain.dataset("validation", seq_len)
    done = []
    for label, model_dir, steps in rows:
        say(f"sampling {label} at {steps} steps ({num_samples} samples)")
        model = load_pretrained(model_dir).eval()
        run = run_settings_of(read_pretrained_config(model_dir))
        done.append(demo_row(label, model, domain, steps, num_samples, seq_len, reference, seed, run))
    return done


