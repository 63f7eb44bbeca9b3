"""DiDi-Instruct on a distribution known exactly: the built-in Markov-chain domain.

    python benchmarks/distill_synthetic.py --out bench/distill_synthetic --threads 1  # full run (CPU: ~35-50 min)
    python benchmarks/distill_synthetic.py --out /tmp/q --quick                     # smoke run (a few minutes)
    python benchmarks/distill_synthetic.py --out bench/x student_lr=3e-4 iterations=800   # DistillConfig overrides

Every sample is scored by its exact negative log-likelihood per token under the true chain (and its
unigram entropy, so a low NLL bought by collapsing onto a few tokens is visible). It reports:
data; the teacher at 2/4/8/64/256 steps; the distilled student at 2/4/8 steps, plain and with RGAS;
beside each student row, the teacher at the same step count and the temperature that matches the
student's entropy (a student that only sharpens is no better than that); the cumulative ablation
(method.md §2.5) at 4 and 8 steps; and the cost of one iteration of each recipe against its floor
(the work an iteration must do, timed piece by piece: benchmarks/distill_floor.py). Prints a table,
writes OUT/results.json. A teacher already in OUT/teacher/model is reused (delete it to retrain).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from distill_floor import print_cost, time_iteration

from discdistill.builtin.markov import MarkovDomain
from discdistill.checkpoint import load_pretrained
from discdistill.config import PretrainConfig, build, merge, parse_override
from discdistill.distill import (
    DistillConfig,
    DistillTrainer,
    RGASConfig,
    ablation_ladder,
    distill,
    load_rgas,
)
from discdistill.evaluation.baselines import TemperedDenoiser, matched_temperature
from discdistill.sampling import sample
from discdistill.training import pretrain

#: The teacher: the tiny preset narrowed to 64 wide (the chain needs little capacity; CPU time does).
TEACHER = dict(model_preset="tiny", model_overrides={"hidden_size": 64, "cond_dim": 32, "n_heads": 2},
               batch_size=128, steps=4000, lr=2e-3, warmup_steps=200, eval_every=1000, save_every=1000,
               log_every=100, seed=0, device="cpu")
#: The method's defaults, with optimiser values a small model needs (docs/distillation.md, "Tuning").
STUDENT = dict(iterations=1000, warmup_steps=100, disc_warmup_steps=10, batch_rows=8, group_size=4, student_lr=1e-4,
               disc_lr=1e-3, ema_decay=0.99, save_every=10_000, device="cpu", seed=0)
#: The best variant found on this domain (extensions and departures from method.md, each a config switch).
#: A sequence-level discriminator (per-position logits summed) whose reward is the integral over t itself:
#: read at 8 fixed times spanning [0.02, 0.98], weighted by omega(t) ~ 1/t (all samples alike, so the
#: whole batch is one comparison group).
TUNED = dict(disc_objective="sequence", label_smoothing=0.0, reward_times=8, reward_time_range=(0.02, 0.98),
             reward_corruptions=1, advantage_norm="batch", omega="simplified")
#: The students: method defaults, the tuned variant, and the diagnostic fed the exact log-likelihood.
VARIANTS = ("student", "tuned", "oracle-reward")
QUICK_TEACHER = dict(steps=600)
QUICK_STUDENT = dict(iterations=60)


def evaluate(domain: MarkovDomain, ids: torch.Tensor) -> dict[str, float]:
    m = domain.metrics(ids)
    return {"nll": m["true_nll_per_token"], "entropy": m["unigram_entropy"]}


def draw(model: Any, steps: int, num: int, seed: int, rule: Any = None) -> torch.Tensor:
    kwargs = dict(num_samples=num, seq_len=32, steps=steps, mask_id=16, generator=torch.Generator().manual_seed(seed),
                  cache=steps > 32 and rule is None)
    if rule is not None:
        kwargs["step_rule"] = rule
    return sample(model, **kwargs).ids


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two 1-d tensors (no ties expected: continuous values)."""
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


class ProbedTrainer(DistillTrainer):
    """Records how well the reward ranks the student's samples: Spearman(reward, exact log-likelihood)
    over the batch, for the last ``window`` iterations (the diagnostic behind docs/distillation.md)."""

    def __init__(self, *args: Any, domain: MarkovDomain, window: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.domain, self.window, self.rank_correlations = domain, window, []

    def _rewards(self, x_fake: torch.Tensor, z_fake: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rewards = super()._rewards(x_fake, z_fake, t)
        if self.iteration >= self.config.iterations - self.window:
            log_likelihood = -self.domain.true_nll_per_token(x_fake).float()
            self.rank_correlations.append(spearman(rewards.cpu(), log_likelihood.cpu()))
        return rewards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, not the method")
    parser.add_argument("--samples", type=int, default=512, help="samples per evaluated sampler")
    parser.add_argument("--ablation-iterations", type=int, default=250, help="iterations per ablation rung")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="students to distil (e.g. only `tuned` for a long confirmation run)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("overrides", nargs="*", help="DistillConfig key=value overrides")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    domain = MarkovDomain()
    train, validation = domain.dataset("train", 32), domain.dataset("validation", 32)
    num = 64 if args.quick else args.samples
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": sys.version.split()[0],
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "samples_per_row": num, "seq_len": 32, "domain": "markov (16 tokens, exact likelihood)",
        "expected_data_nll": domain.chain.expected_nll_per_token(32),
    }
    rows: list[tuple[str, str, dict[str, float]]] = []

    def record(group: str, name: str, metrics: dict[str, float]) -> None:
        rows.append((group, name, metrics))
        print(f"{group:<14} {name:<48} NLL/token {metrics['nll']:7.3f}   entropy {metrics['entropy']:.3f}", flush=True)

    def matched_teacher(teacher: Any, steps: int, entropy: float) -> tuple[str, dict[str, float]]:
        """The cheap alternative: the teacher at ``steps`` and the temperature matching a student's entropy."""
        def scored(t: float) -> dict[str, float]:
            return evaluate(domain, draw(TemperedDenoiser(teacher, t), steps, num, seed=1))

        t = matched_temperature(lambda temp: scored(temp)["entropy"], entropy, low=0.3, high=1.0, bisections=6)
        metrics = {**scored(t), "temperature": t}
        return f"  teacher {steps} steps, T = {t:.3f} (entropy matched)", metrics

    # ---------------------------------------------------------------- teacher
    teacher_config = build(PretrainConfig, {**TEACHER, **(QUICK_TEACHER if args.quick else {})})
    teacher_dir = out / "teacher" / "model"
    tic = time.perf_counter()
    if not (teacher_dir / "config.json").is_file():
        pretrain(teacher_config, train, validation, out / "teacher", vocab_size=17, mask_id=16, progress=False)
    results["teacher_seconds"] = time.perf_counter() - tic
    results["teacher_config"] = teacher_config.model_dump()
    teacher = load_pretrained(teacher_dir).eval()
    record("data", "validation rows", evaluate(domain, validation[:num]))
    for steps in (2, 4, 8, 64, 256):
        record("teacher", f"{steps} steps", evaluate(domain, draw(teacher, steps, num, seed=1)))

    # ---------------------------------------------------------------- students
    data: dict[str, Any] = {**STUDENT, **(QUICK_STUDENT if args.quick else {})}
    for item in args.overrides:
        keys, value = parse_override(item)
        merge(data, keys, value)
    config = build(DistillConfig, data)
    tuned = build(DistillConfig, {**data, **TUNED})
    results["distill_config"] = config.model_dump(mode="json")
    results["tuned_overrides"] = TUNED

    def exact_reward(x: torch.Tensor) -> torch.Tensor:
        return -domain.true_nll_per_token(x).float()

    variants = [("student", config, None, True), ("tuned", tuned, None, True),
                ("oracle-reward", config, exact_reward, False)]
    results["distill_seconds"] = {}
    for name, variant, reward_fn, with_rgas in variants:
        if name not in args.variants:
            continue
        run_dir = out / f"run-{name}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        tic = time.perf_counter()
        trainer = ProbedTrainer(variant, load_pretrained(teacher_dir), train, run_dir, teacher_path=str(teacher_dir),
                                progress=False, reward_fn=reward_fn, domain=domain)
        student_dir = trainer.run()
        results["distill_seconds"][name] = time.perf_counter() - tic
        if trainer.rank_correlations:  # the discriminator's reward (the oracle's is exact)
            rank = statistics.mean(trainer.rank_correlations)
            results.setdefault("reward_rank_correlation", {})[name] = rank
            print(f"{name:<14} reward rank correlation with the exact log-likelihood (last 100 iterations): "
                  f"{rank:.2f}", flush=True)
        student = load_pretrained(student_dir).eval()
        for steps in (2, 4, 8):
            metrics = evaluate(domain, draw(student, steps, num, seed=1))
            record(name, f"{steps} steps", metrics)
            record(name, *matched_teacher(teacher, steps, metrics["entropy"]))
        if not with_rgas:
            continue
        for score in ("all", "masked"):
            rule = load_rgas(run_dir, RGASConfig(score=score))
            for steps in (2, 4, 8):
                rule.reset_counts()
                ids = draw(student, steps, num, seed=1, rule=rule)
                metrics = {**evaluate(domain, ids), "disc_passes": rule.disc_passes}
                record(name, f"{steps} steps + RGAS (score={score}, +{rule.disc_passes} D passes)", metrics)

    # ---------------------------------------------------------------- ablation
    if not args.skip_ablation:
        iterations = min(args.ablation_iterations, config.iterations)
        for name, rung in ablation_ladder(config.model_copy(update={"iterations": iterations})):
            rung_dir = out / "ablation" / name.replace("+ ", "").replace(" ", "_")
            if rung_dir.exists():
                shutil.rmtree(rung_dir)
            model = load_pretrained(distill(rung, teacher_dir, train, rung_dir, progress=False)).eval()
            for steps in (4, 8):
                record("ablation", f"{name} @ {steps} steps", evaluate(domain, draw(model, steps, num, seed=1)))

    # ---------------------------------------------------------------- cost of one iteration
    results["iteration_cost"] = {}
    for name, variant in (("student", config), ("tuned", tuned)):
        trainer = DistillTrainer(variant, load_pretrained(teacher_dir), train, out / "timing" / name,
                                 progress=False)
        results["iteration_cost"][name] = cost = time_iteration(trainer, repeats=3 if args.quick else 10)
        print_cost(f"one iteration of {name!r} ({variant.samples_per_iteration} student samples)", cost)

    results["rows"] = [{"group": g, "name": n, **m} for g, n, m in rows]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'group':<14} {'sampler':<48} {'NLL/token':>9} {'entropy':>8}")
    for group, name, metrics in rows:
        print(f"{group:<14} {name:<48} {metrics['nll']:9.3f} {metrics['entropy']:8.3f}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
