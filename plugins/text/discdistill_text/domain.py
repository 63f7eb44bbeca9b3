"""The text domain: GPT-2 BPE, the embedded State of the Union corpus offline, OpenWebText online."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from discdistill.storage import atomic_write_bytes
from discdistill.config import StrictModel
from discdistill.errors import DataError
from discdistill.evaluation.entropy import mean_entropy
from discdistill.interfaces import Domain

from discdistill_text.corpus import OWT_NAME, load_blocks
from discdistill_text.tokenizer import EOS_ID, MASK_ID, GPT2BPETokenizer, get_tokenizer

#: The line that follows every sample in a .txt samples file.
TXT_DELIMITER = "=" * 80
#: Reference rows `TextDomain.metrics` looks at (keeps the call cheap on a whole validation split).
METRIC_REFERENCE_ROWS = 1024


class TextDomain(Domain):
    """English text, GPT-2 BPE ids (50,257 + mask = 50,258).

    ``dataset(split, seq_len, source)``: ``source`` None is the embedded offline corpus (State of the
    Union addresses, ~2 M tokens; CPU-sized, hence the default seq_len of 128), ``"tiny"`` its first
    10 addresses, ``"openwebtext"`` MDLM's corpus from the hub (MDLM trains with seq_len 1024 there),
    or a local .txt / .jsonl file or folder. See `discdistill_text.corpus`.
    """

    name: ClassVar[str] = "text"
    description: ClassVar[str] = ("English text with GPT-2 BPE; offline: embedded State of the Union corpus, "
                                  "online: OpenWebText (MDLM's split)")
    default_seq_len: ClassVar[int] = 128
    default_preset: ClassVar[str] = "tiny"
    sample_suffix: ClassVar[str] = ".jsonl"
    default_judge: ClassVar[str] = "smollm2"  # `discdistill eval` scores text with the offline judge

    class Settings(StrictModel):
        """``--domain-set openwebtext_path=...``: where ``--data openwebtext`` comes from."""

        openwebtext_path: str = Field(OWT_NAME, min_length=1, description="What `datasets.load_dataset` loads for "
                                      "--data openwebtext: the hub's openwebtext, a mirror's id or a local folder.")

    def tokenizer(self) -> GPT2BPETokenizer:
        return get_tokenizer()

    def dataset(self, split: str, seq_len: int, source: str | None = None) -> torch.Tensor:
        return load_blocks(split, seq_len, source, openwebtext_path=self.settings.openwebtext_path)

    def decode_samples(self, ids: torch.Tensor) -> list[str]:
        """[B, L] ids -> strings; EOS stays visible as ``<|endoftext|>`` (documents are wrapped)."""
        return get_tokenizer().decode_batch(ids.tolist())

    def write_samples(self, samples: list[Any], path: Path, metadata: dict[str, Any]) -> Path:
        return write_samples(samples, path, metadata)

    def read_samples(self, path: Path) -> list[str]:
        return read_samples(path)

    def metrics(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Mean per-sample unigram entropy (nats), EOS and mask fractions; the same for the reference."""
        out = _id_metrics(samples)
        if reference is not None and reference.numel():
            ref = _id_metrics(reference[:METRIC_REFERENCE_ROWS])
            out.update({f"reference_{k}": v for k, v in ref.items()})
        return out


# --- metrics --------------------------------------------------------------------------------------

def _id_metrics(ids: torch.Tensor) -> dict[str, float]:
    ids = torch.as_tensor(ids).long()
    if ids.numel() == 0:
        return {}
    return {
        "entropy": mean_entropy(list(ids)),  # the one definition, discdistill.evaluation.entropy
        "eos_fraction": float((ids == EOS_ID).double().mean()),
        "mask_fraction": float((ids == MASK_ID).double().mean()),
    }


def _counts(ids: Any, vocab_size: int) -> np.ndarray:
    flat = np.asarray(ids.reshape(-1) if hasattr(ids, "reshape") else ids).astype(np.int64).reshape(-1)
    return np.bincount(flat, minlength=vocab_size).astype(np.float64)


def unigram_entropy(corpus_ids: Any, vocab_size: int = MASK_ID + 1) -> float:
    """Entropy (nats/token) of the corpus's unigram distribution: what a model that ignores context
    scores. A teacher's per-token NLL should be well below it."""
    counts = _counts(corpus_ids, vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(ids: Any, reference_ids: Any, vocab_size: int = MASK_ID + 1,
                          alpha: float = 1.0) -> float:
    """Mean -log q(id) (nats/token) of ``ids`` under the add-``alpha`` unigram model of ``reference_ids``:
    the held-out version of `unigram_entropy` (e.g. validation under train counts)."""
    counts = _counts(reference_ids, vocab_size) + alpha
    log_q = np.log(counts / counts.sum())
    return float(-(_counts(ids, vocab_size) * log_q).sum() / max(1, np.asarray(ids).size))


# --- writing and reading samples ------------------------------------------------------------------

def _format(path: Path) -> str:
    return path.suffix.lower() if path.suffix.lower() in (".txt", ".jsonl") else ""


def write_samples(samples: Sequence[str], path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write text samples atomically; the path's suffix picks the format.

    * ``.jsonl``: one ``{**metadata, "index": i, "text": sample}`` object per line (keeps metadata).
    * ``.txt``: each sample followed by a line of 80 ``=``; no metadata (use .jsonl to keep it).
    * anything else: ``.jsonl`` is appended to the name. Returns the path written.
    """
    path = Path(path)
    if not _format(path):
        path = path.with_name(path.name + TextDomain.sample_suffix)
    for i, sample in enumerate(samples):
        if not isinstance(sample, str):
            raise TypeError(f"sample {i} is {type(sample).__name__}, not str; decode ids with decode_samples first")
    if _format(path) == ".txt":
        content = "".join(f"{s}\n{TXT_DELIMITER}\n" for s in samples)
    else:
        meta = dict(metadata or {})
        content = "".join(json.dumps({**meta, "index": i, "text": s}, ensure_ascii=False, default=str) + "\n"
                          for i, s in enumerate(samples))
    atomic_write_bytes(path, content.encode("utf-8"))
    return path


def read_samples(path: str | os.PathLike[str]) -> list[str]:
    """The samples of a file written by `write_samples` (.txt or .jsonl)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")  # no newline translation: samples may hold "\r"
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read samples ({err})") from None
    if _format(path) == ".txt":
        return text.split(f"\n{TXT_DELIMITER}\n")[:-1] if text else []
    samples = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 is not a line end
        if line.strip():
            try:
                samples.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{lineno}: not a samples record with a \"text\" field") from None
    return samples
