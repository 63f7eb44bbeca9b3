"""Judge-free quality of character-level samples: do the words exist, and is the text still varied?

Every function takes decoded samples (strings over the text8 alphabet, space-separated words).
Definitions:

* ``inner_words(sample)``: the sample's words without its first and last one, which a fixed-length
  block cuts mid-word (a sample of fewer than three words has none).
* ``word_validity``: over the inner words of all samples (pooled), the fraction found in the
  vocabulary (the set of words of the training split). Held-out real text scores near 1 (the ceiling
  printed beside it); word salad that spells well also scores high, so read it with the diversity below.
* ``char_entropy``: entropy (nats) of the pooled character histogram (27 symbols: at most
  log 27 = 3.30); English is about 2.85 in the embedded corpus. A collapsing student loses it first.
* ``distinct_n``: distinct word n-grams / all word n-grams over the inner words (pooled), n = 1, 2.
* ``mean_word_length``: mean length in characters of the inner words.

A metric undefined for the input (no inner words, no characters) is NaN, never a made-up number.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence


def inner_words(sample: str) -> list[str]:
    """The words of a sample without the first and the last (cut by the block edges)."""
    return sample.split()[1:-1]


def word_validity(samples: Sequence[str], vocabulary: frozenset[str] | set[str]) -> float:
    words = [w for s in samples for w in inner_words(s)]
    return sum(w in vocabulary for w in words) / len(words) if words else math.nan


def char_entropy(samples: Sequence[str]) -> float:
    counts = Counter(ch for s in samples for ch in s)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else math.nan


def _ngrams(words: list[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(words[i:] for i in range(n)))


def distinct_n(samples: Sequence[str], n: int) -> float:
    grams = [g for s in samples for g in _ngrams(inner_words(s), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def mean_word_length(samples: Sequence[str]) -> float:
    words = [w for s in samples for w in inner_words(s)]
    return sum(map(len, words)) / len(words) if words else math.nan


def word_metrics(samples: Sequence[str], vocabulary: frozenset[str] | set[str]) -> dict[str, float]:
    """All of the above, keyed as `discdistill eval` prints them."""
    return {"word_validity": word_validity(samples, vocabulary), "char_entropy": char_entropy(samples),
            "distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2),
            "mean_word_length": mean_word_length(samples)}
