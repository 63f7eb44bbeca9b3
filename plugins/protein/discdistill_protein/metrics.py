"""Cheap, offline, deterministic quality proxies for generated protein sequences.

Every function takes plain lists of sequence strings (upper case, as `ProteinTokenizer.decode`
returns them). Definitions (all logarithms base 2; the alphabet is the 25 residue letters of the
tokenizer, ``ACDEFGHIKLMNPQRSTVWY`` + ``XBUZO``):

* ``aa_composition_js``: Jensen-Shannon divergence between the pooled residue frequencies of the
  samples and of the reference. JS(P, Q) = KL(P || M)/2 + KL(Q || M)/2 with M = (P + Q)/2; in
  bits, so it lies in [0, 1] (0: identical composition; 1: disjoint alphabets).
* ``dipeptide_js``: the same over the 625 overlapping residue pairs (positions i, i+1 of each
  sequence, pooled).
* ``length_wasserstein``: Wasserstein-1 distance between the two empirical length distributions,
  W1 = integral |F_samples(x) - F_reference(x)| dx, divided by the mean reference length
  (0: same distribution; 0.1: lengths off by about 10 % of a typical protein).
* ``homopolymer_rate``: fraction of sequences containing a run of at least 5 identical residues.
* ``low_complexity_rate``: over every window of 12 consecutive residues of every sequence (stride 1,
  pooled), the fraction whose Shannon entropy of residue counts is below 2.2 bits. Window 12 and
  2.2 bits are the window and trigger complexity of SEG (Wootton & Federhen 1993); this is the
  plain-entropy screen, not SEG's full masking. Random sequences over 20 letters score about 3.3
  bits a window; a window of one repeated residue scores 0.
* ``pairwise_diversity``: mean over pairs i < j of 1 - Jaccard(3-mers(s_i), 3-mers(s_j)), over
  sets of distinct overlapping 3-mers (the first 1,000 sequences at most). 0: all identical.
* ``nearest_reference_similarity``: for each sample, the largest 3-mer Jaccard similarity to any
  reference sequence; ``novelty`` = 1 - its mean over samples (1: shares no 3-mer with any
  reference sequence; 0: every sample's 3-mer set equals a reference's).

Conventions: Jaccard of two empty 3-mer sets (sequences shorter than 3) is 1, of an empty and a
non-empty set 0. A metric that is undefined for the input (no residues, no windows, fewer than two
sequences) is NaN, never a made-up number.

pLDDT (`plddt`) is optional: it returns None unless a structure predictor is importable (fair-esm's
ESMFold, ``import esm``) or one was registered with `set_plddt_predictor`.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from discdistill_protein.tokenizer import RESIDUES

ALPHABET = RESIDUES
A = len(ALPHABET)
HOMOPOLYMER_RUN = 5
LOW_COMPLEXITY_WINDOW = 12
LOW_COMPLEXITY_BITS = 2.2
KMER = 3
DIVERSITY_MAX_SEQUENCES = 1000

_BYTE_TO_INDEX = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(ALPHABET):
    _BYTE_TO_INDEX[ord(_c)] = _i
_HOMOPOLYMER = re.compile(rf"(.)\1{{{HOMOPOLYMER_RUN - 1},}}")


def _indices(seq: str) -> np.ndarray:
    """Residue letters -> alphabet indices (characters outside the alphabet are dropped)."""
    idx = _BYTE_TO_INDEX[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]
    return idx[idx >= 0]


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two count or probability vectors (NaN if one is all zero)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def residue_counts(seqs: Sequence[str]) -> np.ndarray:
    counts = np.zeros(A, dtype=np.int64)
    for seq in seqs:
        counts += np.bincount(_indices(seq), minlength=A)
    return counts


def dipeptide_counts(seqs: Sequence[str]) -> np.ndarray:
    counts = np.zeros(A * A, dtype=np.int64)
    for seq in seqs:
        idx = _indices(seq)
        if idx.size >= 2:
            counts += np.bincount(idx[:-1] * A + idx[1:], minlength=A * A)
    return counts


def aa_composition_js(samples: Sequence[str], reference: Sequence[str]) -> float:
    return js_divergence(residue_counts(samples), residue_counts(reference))


def dipeptide_js(samples: Sequence[str], reference: Sequence[str]) -> float:
    return js_divergence(dipeptide_counts(samples), dipeptide_counts(reference))


def wasserstein1(a: Sequence[float], b: Sequence[float]) -> float:
    """Wasserstein-1 distance between two empirical 1-D distributions (NaN if either is empty)."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        return math.nan
    grid = np.unique(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def length_wasserstein(samples: Sequence[str], reference: Sequence[str]) -> float:
    """W1 between length distributions divided by the mean reference length."""
    ref_lengths = [len(s) for s in reference]
    mean_ref = float(np.mean(ref_lengths)) if ref_lengths else 0.0
    if mean_ref <= 0:
        return math.nan
    return wasserstein1([len(s) for s in samples], ref_lengths) / mean_ref


def homopolymer_rate(seqs: Sequence[str], min_run: int = HOMOPOLYMER_RUN) -> float:
    """Fraction of sequences with a run of >= ``min_run`` identical residues."""
    if not seqs:
        return math.nan
    pattern = _HOMOPOLYMER if min_run == HOMOPOLYMER_RUN else re.compile(rf"(.)\1{{{min_run - 1},}}")
    return sum(1 for s in seqs if pattern.search(s)) / len(seqs)


def window_entropies(seq: str, window: int = LOW_COMPLEXITY_WINDOW) -> np.ndarray:
    """Shannon entropy (bits) of residue counts in each window of ``window`` consecutive residues."""
    idx = _indices(seq)
    if idx.size < window:
        return np.zeros(0)
    onehot = np.zeros((idx.size + 1, A), dtype=np.int32)
    onehot[np.arange(1, idx.size + 1), idx] = 1
    cumulative = onehot.cumsum(0)
    counts = cumulative[window:] - cumulative[:-window]  # [n - window + 1, A]
    table = np.zeros(window + 1)
    c = np.arange(1, window + 1)
    table[1:] = -(c / window) * np.log2(c / window)
    return table[counts].sum(-1)


def low_complexity_rate(seqs: Sequence[str], window: int = LOW_COMPLEXITY_WINDOW,
                        threshold: float = LOW_COMPLEXITY_BITS) -> float:
    """Fraction of all length-``window`` windows whose entropy is below ``threshold`` bits."""
    low = total = 0
    for seq in seqs:
        ent = window_entropies(seq, window)
        low += int(np.count_nonzero(ent < threshold - 1e-12))
        total += ent.size
    return low / total if total else math.nan


def kmer_set(seq: str, k: int = KMER) -> np.ndarray:
    """Sorted distinct overlapping k-mers of ``seq`` as integer codes."""
    idx = _indices(seq)
    if idx.size < k:
        return np.zeros(0, dtype=np.int64)
    codes = np.zeros(idx.size - k + 1, dtype=np.int64)
    for j in range(k):
        codes = codes * A + idx[j: idx.size - k + 1 + j]
    return np.unique(codes)


def jaccard_matrix(a: Sequence[str], b: Sequence[str], k: int = KMER) -> np.ndarray:
    """[len(a), len(b)] k-mer Jaccard similarities, through an inverted index on ``b`` (no dense k-mer matrix)."""
    sets_a = [kmer_set(s, k) for s in a]
    sets_b = [kmer_set(s, k) for s in b]
    size_a = np.array([s.size for s in sets_a], dtype=np.int64)
    size_b = np.array([s.size for s in sets_b], dtype=np.int64)
    inter = np.zeros((len(a), len(b)), dtype=np.int64)
    if len(b) and size_b.sum():
        codes = np.concatenate(sets_b)
        owners = np.repeat(np.arange(len(b)), size_b)
        order = np.argsort(codes, kind="stable")
        codes, owners = codes[order], owners[order]
        for row, query in enumerate(sets_a):
            if query.size == 0:
                continue
            left = np.searchsorted(codes, query, side="left")
            right = np.searchsorted(codes, query, side="right")
            spans = right - left
            total = int(spans.sum())
            if total == 0:
                continue
            # indices of every posting in [left, right) for all query k-mers, without a Python loop
            offsets = np.repeat(left - (np.cumsum(spans) - spans), spans)
            inter[row] = np.bincount(owners[np.arange(total) + offsets], minlength=len(b))
    union = size_a[:, None] + size_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return sim


def pairwise_diversity(seqs: Sequence[str], k: int = KMER, max_sequences: int = DIVERSITY_MAX_SEQUENCES) -> float:
    """Mean 1 - k-mer Jaccard over all pairs of the first ``max_sequences`` sequences."""
    seqs = list(seqs)[:max_sequences]
    if len(seqs) < 2:
        return math.nan
    sim = jaccard_matrix(seqs, seqs, k)
    upper = np.triu_indices(len(seqs), k=1)
    return float(np.mean(1.0 - sim[upper]))


def nearest_reference_similarity(samples: Sequence[str], reference: Sequence[str], k: int = KMER) -> np.ndarray:
    """Per sample: the largest k-mer Jaccard similarity to any reference sequence."""
    if not samples or not reference:
        return np.zeros(0)
    return jaccard_matrix(samples, reference, k).max(axis=1)


def novelty(samples: Sequence[str], reference: Sequence[str], k: int = KMER) -> float:
    """1 - mean nearest-reference 3-mer Jaccard similarity (NaN without samples or reference)."""
    nearest = nearest_reference_similarity(samples, reference, k)
    return float(1.0 - nearest.mean()) if nearest.size else math.nan


def protein_metrics(samples: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """All sequence metrics of ``samples`` against ``reference``; rates also for the reference (``ref_*``)."""
    nearest = nearest_reference_similarity(samples, reference)
    return {
        "aa_composition_js": aa_composition_js(samples, reference),
        "dipeptide_js": dipeptide_js(samples, reference),
        "length_wasserstein": length_wasserstein(samples, reference),
        "mean_length": float(np.mean([len(s) for s in samples])) if samples else math.nan,
        "ref_mean_length": float(np.mean([len(s) for s in reference])) if reference else math.nan,
        "homopolymer_rate": homopolymer_rate(samples),
        "ref_homopolymer_rate": homopolymer_rate(reference),
        "low_complexity_rate": low_complexity_rate(samples),
        "ref_low_complexity_rate": low_complexity_rate(reference),
        "pairwise_diversity": pairwise_diversity(samples),
        "ref_pairwise_diversity": pairwise_diversity(reference),
        "nearest_ref_jaccard": float(nearest.mean()) if nearest.size else math.nan,
        "novelty": float(1.0 - nearest.mean()) if nearest.size else math.nan,
    }


# -- optional structure confidence -----------------------------------------------------------------
PlddtPredictor = Callable[[list[str]], Sequence[float]]
_predictor: PlddtPredictor | None = None


def set_plddt_predictor(predictor: PlddtPredictor | None) -> None:
    """Register a function ``sequences -> per-sequence mean pLDDT`` (0-100); None unregisters it."""
    global _predictor
    _predictor = predictor


def _esmfold_predictor() -> PlddtPredictor | None:
    """ESMFold from fair-esm when it is importable (weights download on first use; GPU advised)."""
    if importlib.util.find_spec("esm") is None:
        return None
    import esm  # noqa: PLC0415 - optional dependency
    import torch  # noqa: PLC0415

    if not hasattr(esm, "pretrained") or not hasattr(esm.pretrained, "esmfold_v1"):
        return None
    state: dict[str, object] = {}

    def predict(seqs: list[str]) -> list[float]:
        if "model" not in state:
            model = esm.pretrained.esmfold_v1().eval()
            state["model"] = model.cuda() if torch.cuda.is_available() else model
        model = state["model"]
        scores = []
        with torch.no_grad():
            for seq in seqs:
                out = model.infer([seq])  # type: ignore[attr-defined]
                scores.append(float(out["mean_plddt"][0]))
        return scores

    return predict


def plddt(samples: Sequence[str]) -> float | None:
    """Mean predicted pLDDT (0-100) of the non-empty samples, or None when no predictor is available."""
    predictor = _predictor or _esmfold_predictor()
    seqs = [s for s in samples if s]
    if predictor is None or not seqs:
        return None
    return float(np.mean(list(predictor(seqs))))
