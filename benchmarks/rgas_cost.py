"""What RGAS costs over plain ancestral sampling, side by side in one process: text's GPT-2 vocabulary and
the markov domain's 16 tokens, the generic soft-input tilt against the embedding-space tilt.

Random-weight DiTs (cost does not depend on the weights; preset ``--preset``), the discriminator the
DiT feature head on a copy of the same network (as `train` builds it), 8 steps, M = 4 candidates,
re-rank ratio 0.5 (four tilting and four re-ranking steps), ``--batch`` samples, best of ``--repeats``.
Rows: plain ancestral; RGAS through the [B, L, V] soft input (autograd over the vocabulary, the path
any `Discriminator` gets); RGAS with the gradient taken in embedding space (`EmbeddingDiscriminator`,
the path a DiT discriminator gets). The two RGAS paths compute the same tilt (tests/test_rgas.py).

    OMP_NUM_THREADS=1 python benchmarks/rgas_cost.py --out benchmarks/results/rgas-cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import best_time  # noqa: E402

from discdistill.config import model_config_from_preset  # noqa: E402
from discdistill.distill.config import RGASConfig  # noqa: E402
from discdistill.distill.discriminator import DiTDiscriminator  # noqa: E402
from discdistill.distill.rgas import RGAS  # noqa: E402
from discdistill.models import DiT  # noqa: E402
from discdistill.sampling import ancestral_step, sample  # noqa: E402

DOMAINS = {"text (V = 50,258)": (50258, 128), "markov (V = 17)": (17, 32)}


class SoftInputOnly(torch.nn.Module):
    """Hides the embedding interface: RGAS then differentiates through the soft input."""

    def __init__(self, disc: torch.nn.Module) -> None:
        super().__init__()
        self.disc = disc

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.disc(z, sigma)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device, results = torch.device("cpu"), {}
    print(f"| domain | L | plain s | RGAS soft-input s | RGAS embedding s | soft / plain | embedding / plain |")
    print("|---|---|---|---|---|---|---|")
    for name, (vocab, length) in DOMAINS.items():
        torch.manual_seed(0)
        model = DiT(model_config_from_preset(args.preset, vocab_size=vocab, mask_id=vocab - 1, seq_len=length)).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        disc = DiTDiscriminator(model).eval()
        config = RGASConfig(candidates=4, rerank_ratio=0.5)

        def run(rule) -> float:
            return best_time(lambda: sample(model, num_samples=args.batch, seq_len=length, steps=8, mask_id=vocab - 1,
                                            generator=torch.Generator().manual_seed(0), step_rule=rule),
                             args.repeats, device)

        plain, soft, embedded = run(ancestral_step), run(RGAS(SoftInputOnly(disc), config)), run(RGAS(disc, config))
        results[name] = {"vocab": vocab, "seq_len": length, "plain_s": plain, "rgas_soft_input_s": soft,
                         "rgas_embedding_s": embedded, "soft_ratio": soft / plain, "embedding_ratio": embedded / plain}
        print(f"| {name} | {length} | {plain:.3f} | {soft:.3f} | {embedded:.3f} | {soft / plain:.2f} | "
              f"{embedded / plain:.2f} |", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results["protocol"] = {"preset": args.preset, "batch": args.batch, "steps": 8, "candidates": 4,
                           "rerank_ratio": 0.5, "repeats": args.repeats, "threads": torch.get_num_threads(),
                           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                           "commit": commit}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
