"""Generative perplexity under an independent autoregressive judge (method.md §4).

    texts, ended = judge_inputs(domain.tokenizer(), sample_rows)
    result = generative_perplexity(judge, texts, ended)      # result.perplexity

The protocol, exactly:

1. Each sample (ids of the diffusion model) is cut before its first EOS (the domain tokenizer's
   ``eos_id``); the part before it is decoded to text and retokenized with the judge's tokenizer.
2. The judge sequence is ``[BOS] + text tokens + [EOS if the sample had one]``: the judge's BOS is
   prepended when it has one (so the first text token is scored too) and the sample's first EOS
   becomes the judge's EOS, which is scored. Everything after the first EOS is ignored.
3. Every token after the first position is scored: its NLL under the judge given all tokens before it.
4. Aggregation is token-weighted over all samples: exp(sum of NLL / number of scored tokens). Not the
   mean of per-sample perplexities (that over-weights short samples and is dominated by outliers).
5. Nothing is dropped: batches are padded (right) with an attention mask, the last batch may be short.
6. A sequence longer than the judge's context (``max_length``) is scored in windows of ``max_length``
   tokens that overlap by one: window k starts at k (max_length - 1), its first token is context
   only. Every token after the first is scored exactly once, with at most max_length - 1 tokens of
   context (MDLM's code instead restarts the context at each chunk and never scores a chunk's first token).

Cutting in the diffusion model's id space, not in the judge's, keeps the rule the same for every
judge (a judge tokenizer need not map the string "<|endoftext|>" to its own EOS).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from discdistill.interfaces import Tokenizer


class JudgeModel(Protocol):
    """What scoring needs of a judge (`discdistill.evaluation.judges.Judge` provides it)."""

    max_length: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Texts -> judge token ids, no special tokens added."""

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] ids, [B, T] mask (1 = real token, right padding) -> next-token logits [B, T, V]."""


@dataclass(frozen=True)
class SampleScore:
    """One sample under the judge: summed NLL (nats) over its scored tokens, and how many were scored."""

    nll: float
    tokens: int


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float  # exp(total_nll / total_tokens); nan when nothing was scored
    total_nll: float
    total_tokens: int
    per_sample: list[SampleScore]

    @property
    def nll_per_token(self) -> float:
        return self.total_nll / self.total_tokens if self.total_tokens else math.nan


def split_at_eos(rows: Sequence[torch.Tensor], eos_id: int | None) -> tuple[list[torch.Tensor], list[bool]]:
    """Each 1-D row cut before its first ``eos_id``, and whether it had one (a domain without EOS: never)."""
    prefixes, ended = [], []
    for row in rows:
        assert row.dim() == 1, "rows are 1-D id tensors"
        hits = (row == eos_id).nonzero() if eos_id is not None else row.new_zeros((0, 1))
        cut = int(hits[0, 0]) if len(hits) else len(row)
        prefixes.append(row[:cut])
        ended.append(bool(len(hits)))
    return prefixes, ended


def judge_inputs(tokenizer: Tokenizer, rows: Sequence[torch.Tensor]) -> tuple[list[str], list[bool]]:
    """Sample ids -> (text before the first EOS, had an EOS): what `generative_perplexity` takes."""
    prefixes, ended = split_at_eos(rows, tokenizer.eos_id)
    return [tokenizer.decode(p.tolist()) for p in prefixes], ended


def judge_sequence(tokens: Sequence[int], ended: bool, bos_id: int | None, eos_id: int | None) -> list[int]:
    """``[BOS] + tokens + [EOS if ended]``: positions 1.. are scored."""
    if ended and eos_id is None:
        raise ValueError("the sample ended with EOS but the judge has no EOS token to score it with")
    return ([bos_id] if bos_id is not None else []) + list(tokens) + ([eos_id] if ended else [])


def context_windows(length: int, max_length: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most ``max_length`` tokens, overlapping by one, that score each of
    positions 1..length-1 exactly once (a window's first token is context only)."""
    assert max_length >= 2, "a window needs one context token and one scored token"
    if length <= max_length:
        return [(0, length)]
    stride = max_length - 1
    return [(start, min(start + max_length, length)) for start in range(0, length - 1, stride)]


#: ``progress(done, total)``: called after each judge batch with the windows done so far and in all.
Progress = Callable[[int, int], None]


def score_windows(judge: JudgeModel, windows: Sequence[Sequence[int]], *, batch_size: int = 8,
                  progress: Progress | None = None) -> list[SampleScore]:
    """Summed NLL of tokens 1.. of each window given the tokens before it; batched, padded right.

    Windows are batched longest first (less padding); the result is in the input order.
    """
    assert batch_size >= 1
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
    scores: dict[int, SampleScore] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(windows[i]) for i in chunk)
        if width < 2:  # nothing to predict in any of them
            scores.update({i: SampleScore(0.0, 0) for i in chunk})
        else:
            ids = torch.full((len(chunk), width), judge.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, :len(windows[i])] = torch.as_tensor(windows[i], dtype=torch.long)
                mask[row, :len(windows[i])] = 1
            with torch.inference_mode():
                logits = judge.logits(ids, mask)
            assert logits.shape[:2] == ids.shape, "judge logits must be [B, T, V]"
            # float32 log-softmax whatever the judge computes in; padded targets are masked out.
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:].to(logits.device),
                                  reduction="none").double().cpu()
            scored = mask[:, 1:].bool()
            sums = torch.where(scored, nll, torch.zeros_like(nll)).sum(1)
            counts = scored.sum(1)
            scores.update({i: SampleScore(float(sums[row]), int(counts[row])) for row, i in enumerate(chunk)})
        if progress is not None:
            progress(start + len(chunk), len(order))
    return [scores[i] for i in range(len(windows))]


def score_texts(judge: JudgeModel, texts: Sequence[str], ended: Sequence[bool] | None = None, *,
                batch_size: int = 8, progress: Progress | None = None) -> list[SampleScore]:
    """Per-sample (summed NLL, scored tokens) of ``texts`` under the protocol above.

    ``ended[i]``: sample i had an EOS (its text was cut before it); the judge's EOS is appended and scored.
    """
    ended = [False] * len(texts) if ended is None else list(ended)
    assert len(ended) == len(texts), "one ended flag per text"
    sequences = [judge_sequence(toks, end, judge.bos_id, judge.eos_id)
                 for toks, end in zip(judge.encode(texts), ended)]
    windows, owner = [], []
    for i, seq in enumerate(sequences):
        for start, end in context_windows(len(seq), judge.max_length):
            windows.append(seq[start:end])
            owner.append(i)
    totals = [[0.0, 0] for _ in texts]
    for i, score in zip(owner, score_windows(judge, windows, batch_size=batch_size, progress=progress)):
        totals[i][0] += score.nll
        totals[i][1] += score.tokens
    return [SampleScore(nll, int(n)) for nll, n in totals]


def aggregate(scores: Sequence[SampleScore]) -> PerplexityResult:
    """Token-weighted perplexity over all samples: exp(sum NLL / sum tokens)."""
    total_nll = math.fsum(s.nll for s in scores)
    total_tokens = sum(s.tokens for s in scores)
    ppl = math.exp(total_nll / total_tokens) if total_tokens else math.nan
    return PerplexityResult(ppl, total_nll, total_tokens, list(scores))


def generative_perplexity(judge: JudgeModel, texts: Sequence[str], ended: Sequence[bool] | None = None, *,
                          batch_size: int = 8, progress: Progress | None = None) -> PerplexityResult:
    """The protocol's generative perplexity of ``texts`` (see the module docstring)."""
    return aggregate(score_texts(judge, texts, ended, batch_size=batch_size, progress=progress))

