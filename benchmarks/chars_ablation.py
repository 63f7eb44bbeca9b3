"""The paper's ablation ordering on the chars domain: which part of DiDi-Instruct buys what on real text.

Rungs (cumulative; each a `distill` run of ``--iterations`` from the shipped chars teacher with the
domain's recipe, CHARS_DISTILL_RECIPE, with per-sample credit and 16 samples an iteration (LADDER_BASE)
and the overrides shown; one distillation seed, ``--seed``):

* plain policy gradient:          one-step rollout (two_step false), raw rewards as advantages (advantage_norm none)
* + grouped normalisation:        advantage_norm group (rewards standardised within each group of G)
* + intermediate-state matching:  two_step true (roll out 1 -> tau -> 0; the discriminator also sees z_tau)
* + RGAS at sampling:             the previous rung's student and discriminator, reward-guided sampling
                                  (M = 4 candidates, re-ranking on the last half of the steps, tilt 30 -> 40)

Each rung is evaluated as chars_proof.py evaluates students (``--seeds`` sampling seeds x ``--samples``
samples, L = 256, 8 steps, float64 draws), with seconds per seed so the RGAS cost is visible. Run
directories under ``--runs`` are reused: a rung whose student exists is not distilled again, an
interrupted one resumes. Prints a markdown table and writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/chars_ablation.py --runs runs/chars-ablation \\
        --out benchmarks/results/chars-ablation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from chars_proof import row  # noqa: E402 - the proof's evaluation, shared

from discdistill import load_pretrained, plugins  # noqa: E402
from discdistill.config import build  # noqa: E402
from discdistill.distill.config import DistillConfig, RGASConfig  # noqa: E402
from discdistill.distill.rgas import load_rgas  # noqa: E402
from discdistill.distill.trainer import distill  # noqa: E402
from discdistill.workflows import resolve_model_dir  # noqa: E402

#: The rungs keep the method's per-sample credit (the recipe's credit='local' is measured on its own by
#: chars_proof.py, docs/benchmarks.md), so that the ladder is the paper's, and the 16 samples an
#: iteration (4 rows x G = 4) of the recipe they were measured with (it draws 32 since 2026-12-08).
LADDER_BASE: dict[str, Any] = {"credit": "sequence", "batch_rows": 4}
RUNGS: list[tuple[str, dict[str, Any]]] = [
    ("plain policy gradient", {**LADDER_BASE, "two_step": False, "advantage_norm": "none"}),
    ("+ grouped normalisation", {**LADDER_BASE, "two_step": False, "advantage_norm": "group"}),
    ("+ intermediate-state matching", {**LADDER_BASE, "two_step": True, "advantage_norm": "group"}),
]


def distilled(run_dir: Path, overrides: dict[str, Any], iterations: int, seed: int) -> Path:
    """The rung's EMA student, distilling (or resuming) into ``run_dir`` when it is not there yet."""
    domain = plugins.get_domain("chars")
    state = run_dir / "state" / "state.json"
    if state.is_file() and json.loads(state.read_text())["meta"]["iteration"] >= iterations:
        return run_dir / "student"
    config = build(DistillConfig, {**domain.distill_defaults(), **overrides, "iterations": iterations, "seed": seed})
    teacher_dir = resolve_model_dir(domain.shipped_models()["teacher"])
    data = domain.dataset("train", 256)
    print(f"distilling {run_dir.name}: {overrides}", flush=True)
    resume = state.is_file()  # an interrupted rung continues; a rung killed before its first state restarts
    return distill(config, teacher_dir, data, run_dir, resume=resume, overwrite=not resume, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="parent of the rungs' run directories")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="distillation seed")
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"rows": {}}
    for index, (name, overrides) in enumerate(RUNGS):
        run_dir = args.runs / f"rung{index}"
        student = load_pretrained(distilled(run_dir, overrides, args.iterations, args.seed)).eval()
        results["rows"][name] = {**row(name, student, 8, args.seeds, args.samples, args.batch),
                                 "overrides": overrides, "run": str(run_dir)}
    last = args.runs / f"rung{len(RUNGS) - 1}"
    rgas = load_rgas(last, RGASConfig())
    name = "+ RGAS at sampling"
    results["rows"][name] = {**row(name, load_pretrained(last / "student").eval(), 8, args.seeds, args.samples,
                                   args.batch, step_rule=rgas), "rgas": RGASConfig().model_dump(), "run": str(last)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results["protocol"] = {"iterations": args.iterations, "distill_seed": args.seed, "sampling_seeds": args.seeds,
                           "samples_per_seed": args.samples, "steps": 8, "seq_len": 256, "commit": commit,
                           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__}
    print("| rung | word validity (mean +- sd; pooled SE) | char entropy | distinct-2 | mean word length | s / seed |")
    print("|---|---|---|---|---|---|")
    for r in results["rows"].values():
        print(f"| {r['name']} | {r['word_validity']:.4f} +- {r['word_validity_sd']:.4f}; "
              f"{r['word_validity_se_pooled']:.4f} | {r['char_entropy']:.4f} | {r['distinct_2']:.4f} | "
              f"{r['mean_word_length']:.3f} | {r['seconds_per_seed']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
