"""Sampler overhead: time of N-step sampling over N times one denoiser forward (the floor is 1.0).

    python benchmarks/sampler.py --presets tiny small --steps 16 128 1024 --out benchmarks/results/sampler.json
    python benchmarks/sampler.py --presets tiny --steps 8 64 1024 --cache off on --out /tmp/sampler.json

Both numbers are measured side by side in one process at the same batch and length, in alternation
(best of --repeats each; one each for N >= 1024), with random weights (speed does not depend on them).
The overhead is what the loop adds per step: the SUBS softmax, the posterior, the categorical draw
(float64 inverse CDF by default, on CPU only at the positions that unmask) and the carry-over.
"in-loop" divides the same sampling run's time by the time spent inside its own denoiser calls: it
needs no second measurement, so a shared machine's load spikes cancel out of it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch

from discdistill.config import model_config_from_preset
from discdistill.models import DiT
from discdistill.sampling import sample

V = 50258  # GPT-2 + mask: the vocabulary the presets are used with


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    tic = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - tic


@torch.no_grad()
def measure(preset: str, steps: int, batch: int, seq_len: int, precision: str, device: torch.device,
            repeats: int, floor: bool = True, cache: bool = False) -> dict:
    """Best-of-``repeats`` N-step sampling against best-of-``repeats`` N back-to-back forwards.

    The two are timed in alternation, so a slow spell of a shared machine hits both alike. With the
    ``cache`` the sampler makes fewer (and smaller) denoiser calls than N, so N full forwards are not
    its floor: only the in-loop ratio is reported.
    """
    floor = floor and not cache
    model = DiT(model_config_from_preset(preset, vocab_size=V, mask_id=V - 1, seq_len=seq_len)).to(device).eval()
    for p in model.parameters():  # non-degenerate logits (zero-init output would make sampling trivially uniform)
        torch.nn.init.normal_(p, std=0.02)
    z = torch.full((batch, seq_len), V - 1, device=device)
    sigma = torch.zeros(batch, device=device)
    model(z, sigma)  # warm-up
    generator = torch.Generator(device=device).manual_seed(0)

    def forwards() -> None:
        for _ in range(steps):
            model(z, sigma)

    inside: list[float] = []  # seconds spent inside the denoiser during the last sampling run
    calls: list[int] = []  # denoiser calls of each sampling run

    def denoiser(z_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
        synchronize(device)
        tic = time.perf_counter()
        logits = model(z_t, sigma_t)
        synchronize(device)
        inside.append(time.perf_counter() - tic)
        return logits

    def sampling() -> None:
        inside.clear()
        calls.append(sample(denoiser, num_samples=batch, seq_len=seq_len, steps=steps, mask_id=V - 1,
                            precision=precision, cache=cache, generator=generator, device=device).nfe)

    floors, total, in_loop = [], [], []
    for _ in range(repeats if steps < 1024 else 1):
        floors.append(timed(forwards, device) if floor else float("nan"))
        total.append(timed(sampling, device))
        in_loop.append(total[-1] / sum(inside))
    return {"preset": preset, "steps": steps, "batch": batch, "seq_len": seq_len, "precision": precision,
            "cache": cache, "denoiser_calls": calls[-1], "forward_s": min(floors) / steps,
            "sampling_s": min(total), "overhead": min(total) / min(floors), "overhead_in_loop": min(in_loop),
            "tokens_per_s": batch * seq_len / min(total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", nargs="+", type=int, default=[16, 128, 1024])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--precision", nargs="+", default=["float64"])
    parser.add_argument("--cache", nargs="+", choices=["off", "on"], default=["off"],
                        help="sample without and/or with the logits cache (with it only the in-loop ratio is reported)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--in-loop-only", action="store_true",
                        help="Skip the N-forward floor run (halves the time; only the in-loop overhead is reported).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampler.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    machine = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"machine: {machine}")
    print(f"{'preset':<7} {'prec':<8} {'cache':<5} {'N':>5} {'calls':>5} {'B':>3} {'L':>5} {'forward s':>10} "
          f"{'N-step s':>10} "
          f"{'overhead':>9} {'in-loop':>8} {'tokens/s':>9}")
    rows = []
    for preset in args.presets:
        for precision in args.precision:
            for cache, steps in itertools.product(args.cache, args.steps):
                row = measure(preset, steps, args.batch, args.seq_len, precision, device, args.repeats,
                              floor=not args.in_loop_only, cache=cache == "on")
                rows.append(row)
                print(f"{preset:<7} {precision:<8} {cache:<5} {steps:>5} {row['denoiser_calls']:>5} {args.batch:>3} "
                      f"{args.seq_len:>5} {row['forward_s']:>10.4f} "
                      f"{row['sampling_s']:>10.3f} {row['overhead']:>9.3f} {row['overhead_in_loop']:>8.3f} "
                      f"{row['tokens_per_s']:>9.1f}", flush=True)
                # rewritten after every row: a long run stopped early keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"machine": machine, "args": vars(args) | {"out": str(args.out)},
                                               "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
