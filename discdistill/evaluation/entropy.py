"""Unigram entropy of sampled ids: the diversity number printed beside every perplexity.

Definition (as MDLM and DUO report it): for each sample, the entropy in nats of the histogram of
its own token ids, H = -sum_v (c_v / n) log(c_v / n) over the n ids of the whole generated row
(special ids such as EOS and padding included, nothing cut); then the plain mean over samples.
A 128-token sample has H <= log 128 = 4.85; MDLM OWT at L = 1024 is about 5.3 (method.md §4).
Low-precision sampling and greedy tails lower it, and lower perplexity with it: compare
perplexities only at matching entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def sample_entropy(ids: torch.Tensor) -> float:
    """Entropy (nats) of the token histogram of one 1-D sample; 0 for an empty one."""
    assert ids.dim() == 1, "one sample: a 1-D id tensor"
    if ids.numel() == 0:
        return 0.0
    _, counts = torch.unique(ids, return_counts=True)
    p = counts.double() / ids.numel()
    return float(-(p * p.log()).sum())


def sample_entropies(rows: Sequence[torch.Tensor]) -> list[float]:
    """Per-sample entropies of rows of ids (a [K, L] tensor or K 1-D tensors of any lengths)."""
    return [sample_entropy(row) for row in rows]


def mean_entropy(rows: Sequence[torch.Tensor]) -> float:
    """The reported number: the mean over samples of the per-sample entropy (nan with no samples)."""
    values = sample_entropies(rows)
    return math.fsum(values) / len(values) if values else math.nan
