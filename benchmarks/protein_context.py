"""How much context does a protein denoiser use? Entropy and NLL of its x_0 predictions at masked
residue positions of held-out windows, against the residue unigram entropy of the training set.

    python benchmarks/protein_context.py bench/protein5/teacher bench/protein5/student --out benchmarks/results/protein-context.json

A model that ignores context predicts the unigram distribution: entropy = NLL = the unigram entropy.
Low-complexity regions (repeats, composition-biased stretches) need the opposite, a prediction that
follows the residues around it. Per mask rate, the same masked positions (seed 1) for every model;
the first ``--rows`` validation windows; mask logit removed as in SUBS.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import torch

from discdistill.workflows import load_denoiser
from discdistill_protein.domain import ProteinDomain


def unigram_entropy(sequences: list[str]) -> float:
    counts = Counter("".join(sequences))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


@torch.no_grad()
def masked_residue_scores(model: torch.nn.Module, data: torch.Tensor, masked: torch.Tensor, residue: torch.Tensor,
                          mask_id: int) -> tuple[float, float]:
    """(mean entropy, mean NLL of the true residue), nats, over masked residue positions."""
    z = torch.where(masked, torch.full_like(data, mask_id), data)
    logits = model(z, torch.zeros(len(z))).float()
    logits[..., mask_id] = float("-inf")
    log_p = logits.log_softmax(-1)
    where = masked & residue
    entropy = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)[where].mean()
    nll = -log_p.gather(-1, data.unsqueeze(-1)).squeeze(-1)[where].mean()
    return entropy.item(), nll.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="model or run directories")
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.5, 0.8, 0.95])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/protein-context.json"))
    args = parser.parse_args()
    domain = ProteinDomain()
    tokenizer = domain.tokenizer()
    data = domain.dataset("validation", domain.default_seq_len)[:args.rows]
    residue = (data != tokenizer.pad_id) & (data != tokenizer.eos_id) & (data != tokenizer.bos_id)
    unigram = unigram_entropy([r.sequence for r in domain.records("train")])
    models = {str(path): load_denoiser(path, domain, torch.device("cpu"))[0] for path in args.models}
    print(f"training residue unigram entropy: {unigram:.3f} nats; {len(data)} validation windows")
    print(f"{'model':<34} {'mask rate':>9} {'entropy':>8} {'NLL':>7} {'NLL - unigram':>14}")
    rows = []
    for rate in args.rates:
        masked = torch.rand(data.shape, generator=torch.Generator().manual_seed(1)) < rate
        for name, model in models.items():
            entropy, nll = masked_residue_scores(model, data, masked, residue, tokenizer.mask_id)
            rows.append({"model": name, "mask_rate": rate, "entropy": entropy, "nll": nll})
            print(f"{name:<34} {rate:>9.2f} {entropy:>8.3f} {nll:>7.3f} {nll - unigram:>+14.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"unigram_entropy": unigram, "rows": rows, "args": {
        "models": [str(m) for m in args.models], "rates": args.rates, "rows": args.rows}}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
