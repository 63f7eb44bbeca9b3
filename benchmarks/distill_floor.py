"""One DiDi-Instruct iteration against its floor: the work the iteration must do, each piece timed alone.

    OMP_NUM_THREADS=1 python benchmarks/distill_floor.py --recipe markov --threads 1 --out benchmarks/results/distill-floor-markov.json
    OMP_NUM_THREADS=1 python benchmarks/distill_floor.py --recipe chars --threads 1 --out benchmarks/results/distill-floor-chars.json
    python benchmarks/distill_floor.py --recipe chars --set rollout_steps=8 ...           # DistillConfig overrides

The floor of a configuration with N = rows x G samples and K rollout states (1, 2, or rollout_steps),
counted from the configuration itself:

    student forward + backward   at the K rollout states (output layer at their masked positions only)
    teacher forward              at the K states (KL matching; none when kl_weight = 0)
    discriminator fwd + bwd      on the 2N corrupted real and fake rows, disc_steps times
    discriminator forward        on N x reward_times x reward_corruptions reward views (float32, no grad)
    AdamW steps                  of the student and of the discriminator, and the student's EMA update

each with the trainer's own networks, shapes and autocast (the rollout states are those of a real
rollout), on copies where a piece would change the trainer. Full iterations (`DistillTrainer.step`)
and the pieces are timed in alternation, best of --repeats each (the least disturbed run of each:
a shared machine's load spikes only ever add time), so a slow spell hits both alike. What the floor
leaves out is the iteration's own bookkeeping: categorical draws, corruption, losses, KL and entropy
terms, gradient clipping and metrics; `ratio` (iteration / floor) minus 1 is that share.

Recipes: ``markov`` (the tuned settings of benchmarks/distill_synthetic.py, its 270k-parameter
teacher architecture with random weights: speed does not depend on them) and ``chars`` (the shipped
teacher and `CHARS_DISTILL_RECIPE`).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from discdistill import load_pretrained, plugins
from discdistill.config import build, merge, model_config_from_preset, parse_override
from discdistill.diffusion import corrupt
from discdistill.distill import DistillConfig, DistillTrainer
from discdistill.distill.rollout import (
    Rollout,
    grid_rollout,
    sample_tau,
    student_rollout,
)
from discdistill.models import DiT
from discdistill.optim import make_adamw
from discdistill.workflows import resolve_checkpoint, resolve_model_dir

RECIPES = ("markov", "chars")


def seconds(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call (CPU: no device to synchronise)."""
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def _rollout_states(trainer: DistillTrainer) -> Rollout:
    """A real rollout of the configured kind (no grad, its own generator): its states are the floor's inputs."""
    c, n = trainer.config, trainer.config.samples_per_iteration
    generator = torch.Generator(device=trainer.device).manual_seed(1)
    tau = sample_tau(n, c.tau_alpha, c.tau_beta, c.tau_min, c.tau_max, generator, trainer.device)
    common = dict(seq_len=trainer.seq_len, mask_id=trainer.mask_id, schedule=trainer.schedule,
                  time_conditioned=trainer.time_conditioned, precision=c.precision, generator=generator)
    with torch.no_grad(), trainer.autocast():
        if c.rollout_steps is None:
            return student_rollout(trainer.student, tau, two_step=c.two_step, **common)
        return grid_rollout(trainer.student, tau, steps=c.rollout_steps, **common)


def floor_pieces(trainer: DistillTrainer) -> dict[str, Callable[[], Any]]:
    """name -> a callable doing one piece of the work an iteration of ``trainer.config`` must do."""
    c, n, dev = trainer.config, trainer.config.samples_per_iteration, trainer.device
    rollout = _rollout_states(trainer)
    states = [(s.state, trainer.sigma(s.t), s.masked) for s in rollout.steps]
    x_real = trainer.real_rows().repeat_interleave(c.group_size, 0)
    tau = rollout.tau
    alpha = trainer.schedule.alpha(tau.double())
    generator = torch.Generator(device=dev).manual_seed(2)
    z_disc = torch.cat([corrupt(x_real, alpha, trainer.mask_id, generator),
                        corrupt(rollout.x_fake, alpha, trainer.mask_id, generator)])
    sigma_disc = trainer.schedule.sigma(tau.double()).float().repeat(2)
    views = c.reward_times * c.reward_corruptions
    z_reward = torch.cat([corrupt(rollout.x_fake, alpha, trainer.mask_id, generator) for _ in range(views)])
    sigma_reward = sigma_disc[:n].repeat(views)

    student = copy.deepcopy(trainer.student)  # the pieces that step change copies, not the trainer
    disc = copy.deepcopy(trainer.disc)
    opt_student = make_adamw(student.network.parameters(), c.student_lr, c.betas, c.weight_decay)
    opt_disc = make_adamw(disc.parameters(), c.disc_lr, c.betas, c.weight_decay)
    for params in (student.network.parameters(), disc.parameters()):
        for p in params:
            p.grad = torch.zeros_like(p)
    opt_student.step(), opt_disc.step()  # AdamW's state exists from the first step on

    def student_passes() -> None:
        student.train()
        with trainer.autocast():
            outputs = [student.logits_at(z, sigma, masked) for z, sigma, masked in states]
        torch.stack([o.float().sum() for o in outputs]).sum().backward()

    def teacher_passes() -> None:
        with torch.no_grad(), trainer.autocast():
            for z, sigma, masked in states:
                trainer.teacher.logits_at(z, sigma, masked)

    def disc_train() -> None:
        disc.train()
        for _ in range(c.disc_steps):
            with trainer.autocast():
                logits = disc(z_disc, sigma_disc)
            logits.float().sum().backward()

    def disc_reward() -> None:
        disc.eval()
        with torch.no_grad():
            disc(z_reward, sigma_reward)

    def updates() -> None:
        opt_student.step()
        opt_disc.step()
        student.update_ema(c.ema_decay)

    k = len(states)
    pieces = {f"student fwd+bwd ({k} rollout state{'s' * (k > 1)})": student_passes}
    if c.kl_weight > 0:
        pieces[f"teacher fwd ({k} state{'s' * (k > 1)}, KL matching)"] = teacher_passes
    pieces[f"discriminator fwd+bwd (2 x {n} rows{f', x {c.disc_steps}' if c.disc_steps > 1 else ''})"] = disc_train
    pieces[f"discriminator fwd ({views} x {n} reward views)"] = disc_reward
    pieces["AdamW steps (student, discriminator) + EMA"] = updates
    return pieces


def time_iteration(trainer: DistillTrainer, repeats: int, warmup: int = 2) -> dict[str, Any]:
    """Best seconds (of ``repeats``) of one full iteration and of each floor piece, timed in alternation."""
    for _ in range(warmup):
        trainer.step()
    pieces = floor_pieces(trainer)
    for fn in pieces.values():  # warm-up of each piece
        fn()
    full: list[float] = []
    parts: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(repeats):
        full.append(seconds(trainer.step))
        for name, fn in pieces.items():
            parts[name].append(seconds(fn))
    best = {name: min(times) for name, times in parts.items()}
    iteration, floor = min(full), sum(best.values())
    return {"iteration_s": iteration, "floor_s": floor, "ratio": iteration / floor, "pieces": best,
            "iteration_median_s": statistics.median(full), "repeats": repeats}


# ---------------------------------------------------------------------- recipes
def markov_trainer(overrides: dict[str, Any], out: Path) -> DistillTrainer:
    from distill_synthetic import STUDENT, TEACHER, TUNED

    domain, tokenizer = plugins.get_domain("markov"), plugins.get_domain("markov").tokenizer()
    teacher = DiT(model_config_from_preset(TEACHER["model_preset"], vocab_size=tokenizer.vocab_size,
                                           mask_id=tokenizer.mask_id, seq_len=32, **TEACHER["model_overrides"]))
    generator = torch.Generator().manual_seed(0)
    for p in teacher.parameters():  # random, non-degenerate weights: speed does not depend on them
        torch.nn.init.normal_(p, std=0.02, generator=generator)
    config = build(DistillConfig, {**STUDENT, **TUNED, **overrides})
    return DistillTrainer(config, teacher, domain.dataset("train", 32), out, progress=False)


def chars_trainer(overrides: dict[str, Any], out: Path) -> DistillTrainer:
    domain = plugins.get_domain("chars")
    teacher = load_pretrained(resolve_model_dir(resolve_checkpoint("shipped:teacher", domain)))
    config = build(DistillConfig, {**domain.distill_defaults(), "device": "cpu", **overrides})
    return DistillTrainer(config, teacher, domain.dataset("train", domain.default_seq_len), out,
                          progress=False)


TRAINERS = {"markov": markov_trainer, "chars": chars_trainer}


def print_cost(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}: {result['iteration_s'] * 1e3:.1f} ms, floor {result['floor_s'] * 1e3:.1f} ms, "
          f"ratio {result['ratio']:.3f} (best of {result['repeats']} each, in alternation)")
    print("| piece | ms | share of floor |\n|---|---|---|")
    for name, seconds in result["pieces"].items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / result['floor_s']:.1%} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="DistillConfig override applied to every recipe (repeatable)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        keys, value = parse_override(item)
        merge(overrides, keys, value)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads()},
        "overrides": overrides, "recipes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipe:
            trainer = TRAINERS[recipe](overrides, Path(tmp) / recipe)
            result = time_iteration(trainer, args.repeats)
            result["config"] = trainer.config.model_dump(mode="json")
            results["recipes"][recipe] = result
            print_cost(f"{recipe}: one iteration", result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
