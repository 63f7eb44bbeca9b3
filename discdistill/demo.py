"""`discdistill demo`: the mission at small scale, in one command.

Distil the domain's teacher (the shipped one when the plugin ships one) for a few minutes, then sample
the teacher at few and many steps and the student at few steps (and the plugin's fully distilled
student when it ships one), all with the same seed, and print three samples and the domain's metrics
of each row side by side, with the protocol. Nothing here is new machinery: it is `train`, `sample`
and `Domain.metrics` in a row; `demo_command` is the click command (registered by discdistill.cli).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from discdistill import plugins
from discdistill.checkpoint import load_pretrained, read_pretrained_config
from discdistill.cli_options import config_options, domain_option, overwrite_option
from discdistill.config import load_config
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


# --------------------------------------------------------------------------------------------- the command

@click.command("demo")
@domain_option
@click.option("--teacher", default=None, metavar="PATH",
              help="Teacher model/run directory [the domain's shipped teacher, else its cached default].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory of the live distillation [runs/<domain>-demo, replaced on every demo; an "
                   "explicit --out is never replaced without --overwrite].")
@click.option("--iterations", type=click.IntRange(min=1), default=100, show_default=True,
              help="Live distillation iterations (about 4.5 s each for chars on 2 CPU cores).")
@click.option("--num-samples", type=click.IntRange(min=1), default=32, show_default=True,
              help="Samples per row (the table's numbers; three of each are printed).")
@click.option("--steps", type=click.IntRange(min=1), default=8, show_default=True, help="Few-step count.")
@click.option("--many-steps", type=click.IntRange(min=1), default=256, show_default=True,
              help="The teacher's many-step count.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (the same for every row).")
@click.option("--quiet", is_flag=True, help="No progress bar during distillation.")
@overwrite_option
@config_options
def demo_command(domain: str, domain_settings: dict[str, Any], teacher: str | None, out_dir: Path | None,
                 iterations: int, num_samples: int, steps: int, many_steps: int, seed: int, quiet: bool,
                 overwrite: bool, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Distil for a few minutes, then show teacher@8, teacher@256 and student@8 side by side.

    \b
    The teacher is the domain's shipped one when its plugin ships one (chars does). The live student
    is distilled with the domain's recipe (--set overrides it) for --iterations; when the plugin ships
    a fully distilled student, it gets a row too. Every row: three samples, then one table of the
    domain's metrics on --num-samples samples (same seed), with held-out real text as the ceiling.
    \b
    Example (the README's main job: 8.3 minutes on 2 CPU cores, install included):
      discdistill demo --domain chars
    """
    from discdistill.checkpoint import load_pretrained
    from discdistill.distill.config import DistillConfig
    from discdistill.distill.trainer import distill
    from discdistill.workflows import resolve_model_dir, resolve_teacher

    target = plugins.get_domain(domain, domain_settings)
    config = load_config(DistillConfig, config_file, [*overrides, f"iterations={iterations}"],
                         **target.distill_defaults())
    teacher_dir = resolve_teacher(target, teacher, device=config.device, progress=not quiet, say=click.echo)
    teacher_model = load_pretrained(teacher_dir).eval()
    overwrite = overwrite or out_dir is None  # the default demo directory is scratch: each demo replaces it
    out_dir = out_dir or Path("runs") / f"{domain}-demo"
    train_data = target.dataset("train", teacher_model.seq_len) if config.positives == "data" else None
    click.echo(f"distilling a {steps}-step student for {iterations} iterations into {out_dir}")
    student_dir = distill(config, teacher_dir, train_data, out_dir, overwrite=overwrite, progress=not quiet)
    rows = [(f"teacher@{steps}", teacher_dir, steps), (f"teacher@{many_steps}", teacher_dir, many_steps),
            (f"student@{steps} ({iterations} it, live)", student_dir, steps)]
    if "student" in target.shipped_models():
        rows.append((f"student@{steps} (shipped)", resolve_model_dir(target.shipped_models()["student"]), steps))
    results = run_demo(target, rows, num_samples=num_samples, seq_len=teacher_model.seq_len, seed=seed,
                       say=click.echo)
    protocol = [f"domain {domain}; teacher {teacher_dir}; live student {student_dir}",
                f"{num_samples} samples a row, length {teacher_model.seq_len}, ancestral sampling, float64 draws, "
                f"seed {seed}; seconds = wall time of sampling on this machine",
                "entropy: mean over samples of each sample's token unigram entropy (nats)"]
    if target.metrics_protocol():
        protocol.append(f"metrics: {target.metrics_protocol()}")
    click.echo(render(results, protocol))
