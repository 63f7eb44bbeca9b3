"""The `chars` domain: character-level English (text8 protocol), where few-step sampling visibly breaks words."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import torch

from discdistill.interfaces import Domain

from discdistill_text.chars import CharTokenizer, char_streams, chars_blocks, get_char_tokenizer
from discdistill_text.domain import read_samples, write_samples
from discdistill_text.wordstats import word_metrics

#: Most reference rows `CharsDomain.metrics` scores (the held-out ceiling); it scores as many as there are
#: samples, so that distinct-n ratios, which fall with the count, compare like with like.
METRIC_REFERENCE_ROWS = 1024
#: The distillation recipe `train --domain chars` starts from: the method's defaults with the settings found
#: on the markov domain (sequence-level discriminator, reward as an omega-weighted quadrature over t,
#: batch-normalised advantages), per-token credit from the discriminator's per-position rewards over a
#: window of +-4 characters, 32 student samples an iteration (8 rows x G = 4; measured on this domain:
#: docs/benchmarks.md, "chars"), and optimiser values for a 3.6M-parameter student on a CPU (docs/chars.md).
CHARS_DISTILL_RECIPE: dict[str, Any] = dict(
    disc_objective="sequence", label_smoothing=0.0, reward_times=4, reward_time_range=(0.02, 0.98),
    advantage_norm="batch", credit="local", credit_window=4, omega="simplified", batch_rows=8, group_size=4,
    student_lr=1e-4, disc_lr=1e-3,
    warmup_steps=30, disc_warmup_steps=10, ema_decay=0.99, iterations=300, save_every=25, bf16=True)



@lru_cache(maxsize=4)
def training_vocabulary(source: str | None) -> frozenset[str]:
    """The set of words of ``source``'s training split: what `word_validity` counts as a real word."""
    stream = char_streams(source)["train"]
    return frozenset(get_char_tokenizer().decode(stream.tolist()).split())


class CharsDomain(Domain):
    """text8-style characters (space, a-z; mask 27). See `discdistill_text.chars` for the data sources.

    ``metrics`` scores word validity against the training split of the source last passed to
    ``dataset`` (the embedded corpus unless ``--data`` named another), and the same numbers for the
    reference blocks (held-out real text: the ceiling).
    """

    name: ClassVar[str] = "chars"
    description: ClassVar[str] = ("character-level English, text8 protocol (27 symbols); offline: embedded State "
                                  "of the Union corpus, or --data text8")
    default_seq_len: ClassVar[int] = 256
    default_preset: ClassVar[str] = "tiny"
    sample_suffix: ClassVar[str] = ".jsonl"
    default_judge: ClassVar[str] = "smollm2"
    #: Validation NLL is per character: reports also give it in bits (text8's unit).
    nll_unit: ClassVar[str] = "char"

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self._source: str | None = None

    def shipped_models(self) -> dict[str, Path]:
        """The teacher pre-trained once with `discdistill pretrain` and the student distilled from it (see
        data/chars-models/NOTICE.md for the commands, times and machine)."""
        root = Path(str(resources.files("discdistill_text") / "data" / "chars-models"))
        return {name: root / name for name in ("teacher", "student") if (root / name).is_dir()}

    def distill_defaults(self) -> dict[str, Any]:
        return dict(CHARS_DISTILL_RECIPE)

    def tokenizer(self) -> CharTokenizer:
        return get_char_tokenizer()

    def dataset(self, split: str, seq_len: int, source: str | None = None) -> torch.Tensor:
        blocks = chars_blocks(split, seq_len, source)
        self._source = None if source is None else str(source)
        return blocks

    def write_samples(self, samples: list[Any], path: Path, metadata: dict[str, Any]) -> Path:
        return write_samples(samples, path, metadata)

    def read_samples(self, path: Path) -> list[str]:
        return read_samples(path)

    def metrics_protocol(self) -> str:
        vocabulary = training_vocabulary(self._source)
        return (f"word_validity = fraction of inner words (each sample's first and last word dropped, pooled) in the "
                f"training split's vocabulary ({len(vocabulary):,} words of {self._source or 'the embedded corpus'}); "
                "char_entropy = entropy (nats) of the pooled character histogram; distinct_n = distinct / all word "
                "n-grams of the inner words; mean_word_length in characters; reference_* = the same for as many "
                "held-out real blocks (the ceiling)")

    def metrics(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Word validity, character entropy, distinct word 1/2-grams, mean word length; ``reference_*`` the same
        for held-out real text."""
        vocabulary = training_vocabulary(self._source)
        out = word_metrics(self.decode_samples(samples), vocabulary)
        if reference is not None and reference.numel():
            ref = word_metrics(self.decode_samples(reference[:max(1, min(len(samples), METRIC_REFERENCE_ROWS))].long()), vocabulary)
            out.update({f"reference_{k}": v for k, v in ref.items()})
        return out
