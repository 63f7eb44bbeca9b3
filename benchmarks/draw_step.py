"""One CUDA ancestral step, side by side: the draw through SUBS log-probs (before session 5) and
`draw_at_every_position` (now), on random bf16 logits of the 169M model's shape.

    python benchmarks/draw_step.py --batch 32 --seq-len 1024 --vocab 50258 --out benchmarks/results/draw-step-h100.json

Each is timed as the mean of ``--repeats`` steps after one warm-up, twice in alternation; peak memory
is the step's own (reset after the warm-up). Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from discdistill.diffusion import subs_log_probs
from discdistill.sampling import StepContext, ancestral_step, sample_bernoulli, sample_categorical


def step_through_subs(z: torch.Tensor, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The CUDA branch of `ancestral_step` before session 5: SUBS log-probs (carry-over one-hots
    included) at every position, exponentiated, then drawn."""
    masked = z == ctx.mask_id
    stay_prob = (1.0 - ctx.alpha_s) / (1.0 - ctx.alpha_t)
    unmask = masked & ~sample_bernoulli(stay_prob.expand(z.shape), ctx.precision, ctx.generator)
    tokens = sample_categorical(subs_log_probs(logits, z, ctx.mask_id).exp(), ctx.precision, ctx.generator)
    return torch.where(unmask, tokens, z)


def time_step(step, z: torch.Tensor, logits: torch.Tensor, mask_id: int, repeats: int) -> dict[str, float]:
    device = z.device
    ctx = StepContext(denoise=None, mask_id=mask_id, alpha_t=torch.tensor(0.5, dtype=torch.float64, device=device),
                      alpha_s=torch.tensor(0.6, dtype=torch.float64, device=device),
                      sigma_s=torch.tensor(0.0, device=device), index=0, num_steps=16, precision="float64",
                      noise_removal="sample", generator=torch.Generator(device=device).manual_seed(0))
    step(z, logits, ctx)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    for _ in range(repeats):
        step(z, logits, ctx)
    torch.cuda.synchronize()
    return {"ms": (time.perf_counter() - tic) / repeats * 1e3, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50258)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/draw-step.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("draw_step.py times the CUDA branch of the sampler: it needs a CUDA device")
    device, mask_id = torch.device("cuda"), args.vocab - 1
    logits = torch.randn(args.batch, args.seq_len, args.vocab, device=device, dtype=torch.bfloat16)
    z = torch.full((args.batch, args.seq_len), mask_id, device=device)
    half = args.seq_len // 2  # half the positions already unmasked, as mid-way through sampling
    z[:, :half] = torch.randint(0, mask_id, (args.batch, half), device=device)
    rows = []
    for _ in range(2):
        for name, step in [("through SUBS log-probs (before)", step_through_subs),
                           ("draw_at_every_position (now)", ancestral_step)]:
            rows.append({"step": name, **time_step(step, z, logits, mask_id, args.repeats)})
            print(f"{name:<34} {rows[-1]['ms']:8.1f} ms  peak {rows[-1]['peak_gib']:.1f} GiB", flush=True)
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "args": vars(args) | {"out": str(args.out)},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
