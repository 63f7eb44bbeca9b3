"""Everything only a GPU can show, in one run of at most ~8 minutes: sampling speed of the 169M student,
its speed-up over the 1024-step teacher, the RGAS cost ratio and distillation seconds per iteration,
each next to the compute floor it implies.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu-suite.json        # one GPU, nothing else to install
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu-suite.json            # CPU, tiny sizes, < 1 minute

Networks have random weights (speed does not depend on them). On CUDA every network pass runs under
bf16 autocast and the sampling loop's denoiser is ``torch.compile(mode="reduce-overhead")`` (CUDA graphs;
``--no-compile`` to skip; a compile failure falls back to eager and is recorded). Rows:

* student@16 at batch 1 and 32: tokens/s (batch x L / wall time of one whole sampling run, best of 3);
* teacher@1024 at the same batches: timed over ``--probe-steps`` steps and scaled to 1024 (exact up to
  timer noise on CUDA, where every step has the same static shapes); the speed-up student@16 vs teacher@1024;
* RGAS / plain at 8 steps, M = 4, re-rank ratio 0.5, batch 1 (discriminator: the DiT feature head);
* distillation: seconds per DiDi-Instruct iteration, L = 1024, 8 rows x G = 4 = 32 samples (mean of
  ``--iterations`` after 2 warm-up iterations).

Floors: the matmul FLOPs of each measured piece of work are counted once with
torch's flop registry (`torch.utils.flop_counter`; forward and backward, attention included), and floor =
FLOPs / peak. Peak: ``--peak-tflops``, else the dense bf16 peak of a known GPU (H100/H200 989, A100 312,
L40S 362, L4 121 TFLOP/s); unknown GPUs and CPUs get no floor unless one is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).parent))
from speed import best_time, synchronize  # noqa: E402 - the same timer as the CPU speed table

from discdistill.config import build, model_config_from_preset  # noqa: E402
from discdistill.distill.config import DistillConfig, RGASConfig  # noqa: E402
from discdistill.distill.discriminator import DiTDiscriminator  # noqa: E402
from discdistill.distill.rgas import RGAS  # noqa: E402
from discdistill.distill.trainer import DistillTrainer  # noqa: E402
from discdistill.models import DiT  # noqa: E402
from discdistill.sampling import ancestral_step, sample  # noqa: E402

#: Dense bf16 peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
FULL = dict(preset="small", vocab=50258, seq_len=1024, batches=(1, 32), student_steps=16, teacher_steps=1024,
            probe_steps=32, rows=8, group=4)
DRY = dict(preset="tiny", vocab=64, seq_len=32, batches=(1, 4), student_steps=16, teacher_steps=1024,
           probe_steps=8, rows=2, group=2)


class MatmulFlops(TorchDispatchMode):
    """FLOPs of every op torch's flop counter knows (matmuls, attention, convolutions), forward and
    backward. FlopCounterMode itself also tracks modules with hooks that `torch.autograd.grad` (RGAS's
    tilt) does not support, hence this dispatcher-level count."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def counted_flops(fn: Callable[[], object]) -> int:
    with MatmulFlops() as counter:
        fn()
    return counter.total


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def build_dit(size: dict[str, Any], device: torch.device) -> DiT:
    config = model_config_from_preset(size["preset"], vocab_size=size["vocab"], mask_id=size["vocab"] - 1,
                                      seq_len=size["seq_len"], dropout=0.0)
    model = DiT(config).to(device).eval()
    for p in model.parameters():  # non-degenerate logits
        torch.nn.init.normal_(p, std=0.02)
    return model


class Suite:
    def __init__(self, size: dict[str, Any], device: torch.device, bf16: bool, compile_: bool,
                 peak: float | None) -> None:
        self.size, self.device, self.peak = size, device, peak
        self.autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
                         else contextlib.nullcontext())
        self.dit = build_dit(size, device)
        self.notes: list[str] = []
        self.denoiser: Callable = self.dit
        if compile_:
            try:
                compiled = torch.compile(self.dit, mode="reduce-overhead")
                self.denoiser = lambda z, sigma: compiled(z, sigma)  # the dense loop, compiled forward
                self._sample(1, self.size["student_steps"])  # compile outside the timings
            except Exception as err:  # noqa: BLE001 - record and measure eagerly rather than lose the GPU slot
                self.notes.append(f"torch.compile failed, eager instead: {type(err).__name__}: {err}"[:300])
                self.denoiser = self.dit
        self.rows: list[dict[str, Any]] = []

    def _sample(self, batch: int, steps: int, step_rule: Callable = ancestral_step, denoiser: Callable | None = None,
                total_steps: int | None = None) -> None:
        """``steps`` steps of a ``total_steps``-step run (the probe of a long run stops early)."""
        generator = torch.Generator(device=self.device).manual_seed(0)
        with self.autocast:
            sample(denoiser or self.denoiser, num_samples=batch, seq_len=self.size["seq_len"], steps=steps,
                   mask_id=self.size["vocab"] - 1, generator=generator, device=self.device, step_rule=step_rule)

    def floor(self, flops: int) -> float | None:
        return flops / self.peak if self.peak else None

    def add(self, name: str, seconds: float, flops: int, **extra: Any) -> dict[str, Any]:
        row = {"name": name, "seconds": seconds, "flops": flops, "floor_seconds": self.floor(flops), **extra}
        self.rows.append(row)
        floor = f"{row['floor_seconds'] * 1e3:9.2f} ms floor" if row["floor_seconds"] else "     (no floor)"
        print(f"{name:<44} {seconds * 1e3:10.2f} ms  {floor}  {extra}", flush=True)
        return row

    def sampling(self) -> dict[str, Any]:
        s, out = self.size, {}
        forward_flops = counted_flops(lambda: self._sample(1, 1, denoiser=self.dit))  # one pass at batch 1
        for batch in s["batches"]:
            student = best_time(lambda: self._sample(batch, s["student_steps"]), 3, self.device)
            probe = best_time(lambda: self._sample(batch, s["probe_steps"]), 2, self.device)
            teacher = probe * s["teacher_steps"] / s["probe_steps"]
            tokens = batch * s["seq_len"]
            st = self.add(f"student@{s['student_steps']} batch {batch}", student,
                          forward_flops * batch * s["student_steps"], tokens_per_s=tokens / student)
            self.add(f"teacher@{s['teacher_steps']} batch {batch} (from {s['probe_steps']} steps)", teacher,
                     forward_flops * batch * s["teacher_steps"], tokens_per_s=tokens / teacher)
            out[f"batch{batch}"] = {"student_tokens_per_s": tokens / student,
                                    "student_tokens_per_s_floor": tokens / st["floor_seconds"] if st["floor_seconds"] else None,
                                    "speedup_vs_teacher": teacher / student}
        return out

    def rgas(self) -> dict[str, float]:
        disc = DiTDiscriminator(self.dit).to(self.device).eval()
        rule = RGAS(disc, RGASConfig(candidates=4, rerank_ratio=0.5))
        plain = best_time(lambda: self._sample(1, 8, denoiser=self.dit), 3, self.device)
        guided = best_time(lambda: self._sample(1, 8, step_rule=rule, denoiser=self.dit), 3, self.device)
        plain_flops = counted_flops(lambda: self._sample(1, 8, denoiser=self.dit))
        guided_flops = counted_flops(lambda: self._sample(1, 8, step_rule=rule, denoiser=self.dit))
        self.add("plain@8 batch 1 (eager)", plain, plain_flops)
        self.add("RGAS@8 batch 1, M 4, re-rank 0.5 (eager)", guided, guided_flops)
        return {"ratio": guided / plain, "flop_ratio": guided_flops / plain_flops}

    def distillation(self, iterations: int) -> dict[str, Any]:
        s = self.size
        data = torch.randint(0, s["vocab"] - 1, (64, s["seq_len"]), generator=torch.Generator().manual_seed(0))
        config = build(DistillConfig, {"batch_rows": s["rows"], "group_size": s["group"], "iterations": 1000,
                                       "device": str(self.device), "bf16": self.device.type == "cuda",
                                       "warmup_steps": 0})
        with tempfile.TemporaryDirectory() as tmp:
            trainer = DistillTrainer(config, self.dit, data, tmp, progress=False)
            for _ in range(2):
                trainer.step()
            times = []
            for _ in range(iterations):
                synchronize(self.device)
                tic = time.perf_counter()
                trainer.step()
                synchronize(self.device)
                times.append(time.perf_counter() - tic)
            flops = counted_flops(trainer.step)
        seconds = statistics.mean(times)
        row = self.add(f"distillation iteration, {s['rows'] * s['group']} samples, L {s['seq_len']}", seconds, flops,
                       sd=statistics.stdev(times) if len(times) > 1 else 0.0)
        return {"seconds_per_iteration": seconds, "floor_seconds": row["floor_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, under a minute: the script runs")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, for the floors")
    parser.add_argument("--iterations", type=int, default=5, help="timed distillation iterations")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    size = DRY if args.dry_run else FULL
    on_cuda = device.type == "cuda"
    tic = time.perf_counter()
    suite = Suite(size, device, bf16=on_cuda, compile_=on_cuda and not args.no_compile,
                  peak=peak_flops(device, args.peak_tflops))
    params = sum(p.numel() for p in suite.dit.parameters())
    print(f"{size['preset']} DiT, {params / 1e6:.1f}M parameters, V {size['vocab']}, L {size['seq_len']}, on {device}",
          flush=True)
    results = {"sampling": suite.sampling(), "rgas": suite.rgas(),
               "distillation": suite.distillation(2 if args.dry_run else args.iterations)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results["protocol"] = {
        "dry_run": args.dry_run, "size": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
        "parameters": params, "device": torch.cuda.get_device_name(device) if on_cuda else platform.processor(),
        "bf16": on_cuda, "compile": on_cuda and not args.no_compile, "peak_flops": suite.peak, "notes": suite.notes,
        "torch": torch.__version__, "commit": commit, "wall_seconds": time.perf_counter() - tic}
    results["rows"] = suite.rows
    b1 = results["sampling"][f"batch{size['batches'][0]}"]
    print(f"student@{size['student_steps']} batch {size['batches'][0]}: {b1['student_tokens_per_s']:,.0f} tokens/s; "
          f"{b1['speedup_vs_teacher']:.1f}x teacher@{size['teacher_steps']}; RGAS {results['rgas']['ratio']:.2f}x plain "
          f"({results['rgas']['flop_ratio']:.2f}x its FLOPs); distillation "
          f"{results['distillation']['seconds_per_iteration']:.3f} s/iteration", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
