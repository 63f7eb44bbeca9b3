"""Generation speed side by side: the many-step teacher, the few-step student, autoregressive decoding.

    python benchmarks/speed.py --preset tiny --seq-len 128 --batch 1 32 --out benchmarks/results/speed.json
    python benchmarks/speed.py --device cuda --preset small --seq-len 1024 --dtype bfloat16 --compile  # on a GPU

All networks have random weights (speed does not depend on them) and generate the same number of
tokens (batch x seq_len) in one process, one after another, best of ``--repeats``:

* teacher: the DiT at ``--teacher-steps`` (1024) steps, without and with the per-row cache;
* student: the same DiT (a distilled student has the teacher's architecture) at 16 and 8 steps; the
  floor of the few-step speed-up is the step ratio (64 and 128);
* autoregressive: a GPT-2-architecture model of the same width, depth and vocabulary (transformers
  ``GPT2LMHeadModel``), ``generate`` with its KV cache, sampling, exactly seq_len new tokens.

On CPU the sampler runs the output layer only at the positions it unmasks, so a step's cost depends on
the step count and the 1024-step teacher is timed in full by default. ``--extrapolate-above`` (tokens
per batch) times it over ``--probe-steps`` steps and scales instead, which is exact for the static-shape
CUDA path and an upper bound on CPU; such rows say "extrapolated".

On CUDA (``--device cuda``) every step runs the output layer at every position (static shapes), so the
"dense" rows, identical work there, are left out and extrapolated teacher rows are exact up to timer
noise. ``--dtype bfloat16`` runs every network under bf16 autocast (MDLM's sampling precision);
``--compile`` wraps the DiT in ``torch.compile(mode="reduce-overhead")`` (Inductor kernels replayed as
CUDA graphs; the per-row cache changes shapes every step, so its row is left out when compiling).
Compilation happens in an untimed warm-up run of each configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from discdistill.config import model_config_from_preset
from discdistill.models import DiT
from discdistill.sampling import sample

V = 50258  # GPT-2 + mask


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - tic)
    return min(times)


def precision_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for every network pass (norms and embeddings stay float32 inside the DiT)."""
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_dit(preset: str, seq_len: int, device: torch.device) -> DiT:
    model = DiT(model_config_from_preset(preset, vocab_size=V, mask_id=V - 1, seq_len=seq_len)).to(device).eval()
    for p in model.parameters():  # non-degenerate logits
        torch.nn.init.normal_(p, std=0.02)
    return model


def build_autoregressive(dit: DiT, seq_len: int, device: torch.device) -> torch.nn.Module:
    """GPT-2 architecture with the DiT's width, depth, heads and vocabulary (GPT-2 ties its input and
    output embeddings, the DiT does not, so it has fewer parameters; both counts are printed)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = dit.config
    config = GPT2Config(vocab_size=V, n_positions=seq_len + 1, n_embd=c.hidden_size, n_layer=c.n_blocks,
                        n_head=c.n_heads, bos_token_id=0)
    return GPT2LMHeadModel(config).to(device).eval()


def diffusion_seconds(model: DiT, batch: int, seq_len: int, steps: int, cache: bool, repeats: int,
                      device: torch.device, dense: bool = False, denoiser: Callable | None = None) -> float:
    """Best sampling time; ``dense`` hides the DiT behind a plain callable, so the loop runs the output
    layer at every position of every step (the CUDA path's work) instead of only where it draws.
    ``denoiser`` (a compiled DiT) replaces the model in the dense loop."""
    generator = torch.Generator(device=device).manual_seed(0)
    if denoiser is None:
        denoiser = (lambda z, sigma: model(z, sigma)) if dense else model
    return best_time(lambda: sample(denoiser, num_samples=batch, seq_len=seq_len, steps=steps, mask_id=V - 1,
                                    cache=cache, generator=generator, device=device), repeats, device)


def autoregressive_seconds(model: torch.nn.Module, batch: int, seq_len: int, repeats: int,
                           device: torch.device) -> float:
    prompt = torch.zeros(batch, 1, dtype=torch.long, device=device)  # one BOS token; seq_len new tokens follow
    torch.manual_seed(0)
    return best_time(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                            top_k=0, max_new_tokens=seq_len, min_new_tokens=seq_len,
                                            use_cache=True), repeats, device)


@torch.no_grad()
def measure_batch(dit: DiT, ar: torch.nn.Module, batch: int, args: argparse.Namespace,
                  compiled: Callable | None) -> list[dict]:
    L, N, repeats, device = args.seq_len, args.teacher_steps, args.repeats, torch.device(args.device)
    on_cpu = device.type == "cpu"
    rows = []

    def row(kind: str, name: str, seconds: float, nfe: int | str, note: str = "") -> None:
        rows.append({"kind": kind, "generator": name, "batch": batch, "seq_len": L, "nfe": nfe, "seconds": seconds,
                     "tokens_per_s": batch * L / seconds, "note": note})
        print(f"{name:<28} {batch:>5} {L:>5} {str(nfe):>6} {seconds:>10.3f} {batch * L / seconds:>10.1f}  {note}",
              flush=True)

    def seconds(steps: int, repeats: int, cache: bool = False, dense: bool = False) -> float:
        return diffusion_seconds(dit, batch, L, steps, cache, repeats, device, dense=dense, denoiser=compiled)

    if compiled is not None:
        for steps in args.student_steps:  # compile and capture outside the timings
            seconds(steps, 1)
    dense_rows = on_cpu and compiled is None  # a compiled DiT always runs the dense loop (see main)
    if batch * L > args.extrapolate_above:
        row("teacher", f"teacher {N} steps", seconds(args.probe_steps, 1) * N / args.probe_steps, N,
            f"extrapolated from {args.probe_steps} steps")
    else:
        row("teacher", f"teacher {N} steps", seconds(N, 1), N)
    if compiled is None and not args.skip_cache:
        row("teacher_cache", f"teacher {N} steps, cache", seconds(N, 1, cache=True), "<=N",
            "rows that did not change skip the forward")
    for steps in args.student_steps:
        row("student", f"student {steps} steps", seconds(steps, repeats), steps)
        if dense_rows:  # on CUDA the loop always runs the output layer everywhere: the same work
            row("student_dense", f"student {steps} steps, dense", seconds(steps, repeats, dense=True), steps,
                "output layer at every position")
    row("autoregressive", "autoregressive, KV cache", autoregressive_seconds(ar, batch, L, repeats, device), L,
        "GPT-2 architecture")
    return rows


def ratios(rows: list[dict], teacher_steps: int) -> list[dict]:
    """Speed-ups of each student row over the teachers and the autoregressive model, per batch."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        same_batch = [r for r in rows if r["batch"] == batch]
        seconds_of = {r["kind"]: r["seconds"] for r in same_batch if not r["kind"].startswith("student")}
        dense_of = {r["nfe"]: r["seconds"] for r in same_batch if r["kind"] == "student_dense"}
        for r in same_batch:
            if r["kind"] == "student":
                out.append({"batch": batch, "student": r["generator"], "floor": teacher_steps / r["nfe"],
                            "vs_teacher": seconds_of["teacher"] / r["seconds"],
                            "vs_teacher_cache": seconds_of.get("teacher_cache", float("nan")) / r["seconds"],
                            "vs_autoregressive": seconds_of["autoregressive"] / r["seconds"],
                            "vs_dense_loop": dense_of.get(r["nfe"], float("nan")) / r["seconds"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--teacher-steps", type=int, default=1024)
    parser.add_argument("--student-steps", nargs="+", type=int, default=[16, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-steps", type=int, default=64)
    parser.add_argument("--extrapolate-above", type=int, default=10**9,
                        help="Tokens per batch above which the uncached teacher is timed over --probe-steps "
                             "and scaled (an upper bound on CPU, where a step's cost falls with the step count).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: every network under bf16 autocast")
    parser.add_argument("--compile", action="store_true",
                        help='torch.compile(mode="reduce-overhead") the DiT (CUDA graphs on CUDA)')
    parser.add_argument("--skip-cache", action="store_true", help="leave out the cached-teacher row")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dit = build_dit(args.preset, args.seq_len, device)
    ar = build_autoregressive(dit, args.seq_len, device)
    # A plain callable, so the loop runs the compiled forward (the CPU sparse path would call the
    # uncompiled `features` of the module torch.compile wraps).
    compiled_dit = torch.compile(dit, mode="reduce-overhead") if args.compile else None
    compiled = (lambda z, sigma: compiled_dit(z, sigma)) if compiled_dit is not None else None
    params = {"dit": sum(p.numel() for p in dit.parameters()), "autoregressive": sum(p.numel() for p in ar.parameters())}
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "device": str(device), "dtype": args.dtype, "compile": args.compile,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    print(f"machine: {machine}; parameters: {params}")
    print(f"{'generator':<28} {'batch':>5} {'L':>5} {'NFE':>6} {'seconds':>10} {'tokens/s':>10}")
    with precision_context(device, args.dtype):
        rows = [r for batch in args.batch for r in measure_batch(dit, ar, batch, args, compiled)]
    table = ratios(rows, args.teacher_steps)
    print(f"\n{'batch':>5} {'student':<18} {'floor':>6} {'vs teacher':>11} {'vs cached':>10} {'vs AR':>7} {'vs dense':>9}")
    for r in table:
        print(f"{r['batch']:>5} {r['student']:<18} {r['floor']:>6.0f} {r['vs_teacher']:>11.1f} "
              f"{r['vs_teacher_cache']:>10.1f} {r['vs_autoregressive']:>7.2f} {r['vs_dense_loop']:>9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "parameters": params, "args": vars(args) | {"out": str(args.out)},
                                    "rows": rows, "ratios": table}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
