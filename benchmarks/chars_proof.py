"""Does the student close the teacher's step gap on real text? The chars domain's proof table.

Rows (each over ``--seeds`` sampling seeds, ``--samples`` samples per seed, L = 256, ancestral sampling,
float64 categorical draws, no logits cache):

* teacher@8, teacher@256: the few-step failure and the many-step quality the student should reach;
* teacher@32: the teacher at a step count costing about what RGAS adds (optional, ``--with-32``);
* teacher@8 at temperature T: the cheap alternative, T chosen so that its character entropy matches
  the student's (logits / T; T found by 4 bisections in [0.7, 1] on seed 0);
* student@8 (the EMA weights of a `discdistill train --domain chars` run).

Per row: word validity, character entropy, distinct word 1/2-grams, mean word length (definitions in
discdistill_text.wordstats), as mean +- sd over seeds, and the standard error of word validity over
all inner words pooled; seconds per seed. Prints a markdown table, writes JSON.

    python benchmarks/chars_proof.py --teacher shipped:teacher --student shipped:student \\
        --seeds 3 --samples 256 --samples-256 64 --out benchmarks/results/chars-proof.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discdistill import load_pretrained, plugins, sample
from discdistill.sampling import StepRule, ancestral_step
from discdistill.workflows import resolve_checkpoint, resolve_model_dir
from discdistill_text.chars_domain import training_vocabulary
from discdistill_text.wordstats import inner_words, word_metrics

SEQ_LEN = 256


class Tempered(nn.Module):
    """A denoiser whose logits are divided by T (T < 1 sharpens: the low-temperature baseline)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature
        self.vocab_size, self.mask_id, self.seq_len = model.vocab_size, model.mask_id, model.seq_len

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(z, sigma) / self.temperature


def draw(model: nn.Module, steps: int, num: int, seed: int, batch: int,
         step_rule: StepRule = ancestral_step) -> tuple[list[str], float]:
    domain = plugins.get_domain("chars")
    tic, texts = time.perf_counter(), []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num, batch):
        ids = sample(model, num_samples=min(batch, num - start), seq_len=SEQ_LEN, steps=steps, mask_id=model.mask_id,
                     generator=generator, cache=False, step_rule=step_rule).ids
        texts += domain.decode_samples(ids)
    return texts, time.perf_counter() - tic


def row(name: str, model: nn.Module, steps: int, seeds: int, num: int, batch: int,
        step_rule: StepRule = ancestral_step) -> dict[str, Any]:
    vocabulary = training_vocabulary(None)
    per_seed, valid_flags, seconds, examples = [], [], [], []
    for seed in range(seeds):
        texts, dt = draw(model, steps, num, seed, batch, step_rule)
        per_seed.append(word_metrics(texts, vocabulary))
        valid_flags += [w in vocabulary for t in texts for w in inner_words(t)]
        seconds.append(dt)
        examples = examples or texts[:3]
    out: dict[str, Any] = {"name": name, "steps": steps, "seeds": seeds, "samples_per_seed": num,
                           "seconds_per_seed": statistics.mean(seconds), "examples": examples}
    for key in per_seed[0]:
        values = [m[key] for m in per_seed]
        out[key] = statistics.mean(values)
        out[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
    p = sum(valid_flags) / len(valid_flags)
    out["word_validity_se_pooled"] = math.sqrt(p * (1 - p) / len(valid_flags))
    out["inner_words"] = len(valid_flags)
    print(f"{name:<28} validity {out['word_validity']:.4f} +- {out['word_validity_sd']:.4f}  char H "
          f"{out['char_entropy']:.4f}  distinct-2 {out['distinct_2']:.4f}  {out['seconds_per_seed']:.1f} s/seed",
          flush=True)
    return out


def matched_temperature(teacher: nn.Module, target_entropy: float, num: int, batch: int) -> float:
    """T in [0.7, 1] whose teacher@8 character entropy (seed 0) is closest to ``target_entropy`` (4 bisections)."""
    vocabulary = training_vocabulary(None)
    low, high = 0.7, 1.0
    for _ in range(4):
        mid = (low + high) / 2
        texts, _ = draw(Tempered(teacher, mid), 8, num, 0, batch)
        if word_metrics(texts, vocabulary)["char_entropy"] > target_entropy:
            high = mid
        else:
            low = mid
    return (low + high) / 2


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| row | steps | word validity (mean +- sd over seeds; pooled SE) | char entropy | distinct-1 | distinct-2 | mean word length | s / seed |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['name']} | {r['steps']} | {r['word_validity']:.4f} +- {r['word_validity_sd']:.4f}; "
                     f"{r['word_validity_se_pooled']:.4f} | {r['char_entropy']:.4f} +- {r['char_entropy_sd']:.4f} | "
                     f"{r['distinct_1']:.4f} | {r['distinct_2']:.4f} | {r['mean_word_length']:.3f} | "
                     f"{r['seconds_per_seed']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="shipped:teacher")
    parser.add_argument("--student", default=None, help="student model or run directory (or shipped:student)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256, help="samples per seed (8-step rows)")
    parser.add_argument("--samples-256", type=int, default=64, help="samples per seed of teacher@256 (slow on a CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", nargs="+", default=["teacher", "student"], choices=["teacher", "student"])
    parser.add_argument("--with-32", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file (rows are merged into an existing one)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    domain = plugins.get_domain("chars")
    teacher = load_pretrained(resolve_model_dir(resolve_checkpoint(args.teacher, domain))).eval()
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": {}}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "python": sys.version.split()[0], "torch": torch.__version__,
                          "threads": torch.get_num_threads()}
    results["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results["command"] = " ".join(["python", "benchmarks/chars_proof.py", *(argv or sys.argv[1:])])
    reference = domain.dataset("validation", SEQ_LEN)
    held_out = word_metrics(domain.decode_samples(reference[:args.samples].long()), training_vocabulary(None))
    results["held_out_real_text"] = held_out
    print(f"held-out real text: validity {held_out['word_validity']:.4f}, char H {held_out['char_entropy']:.4f}")
    with torch.no_grad():
        if "teacher" in args.rows:
            results["rows"]["teacher@8"] = row("teacher@8", teacher, 8, args.seeds, args.samples, args.batch)
            if args.with_32:
                results["rows"]["teacher@32"] = row("teacher@32", teacher, 32, args.seeds, args.samples, args.batch)
            results["rows"]["teacher@256"] = row("teacher@256", teacher, 256, args.seeds, args.samples_256, args.batch)
        if "student" in args.rows:
            student = load_pretrained(resolve_model_dir(resolve_checkpoint(args.student, domain))).eval()
            results["rows"]["student@8"] = row("student@8", student, 8, args.seeds, args.samples, args.batch)
            t = matched_temperature(teacher, results["rows"]["student@8"]["char_entropy"], args.samples, args.batch)
            results["matched_temperature"] = t
            results["rows"]["teacher@8 T-matched"] = row(f"teacher@8, T = {t:.3f}", Tempered(teacher, t), 8,
                                                          args.seeds, args.samples, args.batch)
    order = ["teacher@8", "teacher@8 T-matched", "teacher@32", "student@8", "teacher@256"]
    table = markdown([results["rows"][k] for k in order if k in results["rows"]])
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
