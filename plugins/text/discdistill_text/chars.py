"""Character-level English under the text8 protocol: 27 symbols (space, a-z) plus the mask.

The protocol (Mahoney's text8 filter, implemented once in `text8_normalize`): lowercase; each digit
spelled out as a word ("3" -> " three "); every other character, accented letters included, becomes a
space; runs of spaces collapse to one. Ids: space 0, a-z 1-26, mask 27.

Sources of `chars_blocks(split, seq_len, source)`:

* ``None`` / ``"sotu"``: the embedded State of the Union corpus (233 speeches, 10.8 M
  characters after the protocol), split by whole speech: every 20th speech (19, 39, ...) is held out.
* ``"tiny"``: its first 10 speeches (the last of them held out), for tests and smoke runs.
* a local file: the real text8 file (one line of 10^8 characters: MDLM's standard split, the first
  90 M characters train, the next 5 M validation, the last 5 M test), or any UTF-8 text file under the
  same protocol (a single stream: its last 5 % is the validation split). ``.gz``, ``.xz``, ``.bz2`` work.

Train blocks are every ``seq_len`` window of the stream at every offset (a zero-copy strided uint8
view), so the shuffled batch order draws random crops; validation blocks are consecutive and
disjoint, so a validation NLL is comparable across runs.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from discdistill.errors import ConfigError, DataError
from discdistill.interfaces import Tokenizer

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
CHAR_MASK_ID = len(ALPHABET)  # 27
CHAR_VOCAB_SIZE = CHAR_MASK_ID + 1  # 28
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: text8's standard split (MDLM, SEDD, MD4): 90 M / 5 M / 5 M characters.
TEXT8_TRAIN_CHARS, TEXT8_VALIDATION_CHARS = 90_000_000, 5_000_000
#: Validation fraction of a local file that is not text8-sized.
FILE_VALIDATION_FRACTION = 0.05
#: A local file must give at least this many letters once normalised.
MIN_LETTERS = 1

_NON_ALPHABET = re.compile(r"[^a-z]+")
_DIGIT = re.compile(r"[0-9]")


def text8_normalize(text: str) -> str:
    """The text8 protocol: lowercase, digits spelled out, everything else a space, runs collapsed.

    >>> text8_normalize("In 1790, Washington said: \\"Café!\\"")
    'in one seven nine zero washington said caf '
    """
    text = _DIGIT.sub(lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text.lower())
    return _NON_ALPHABET.sub(" ", text)


class CharTokenizer(Tokenizer):
    """text8 characters: space 0, a-z 1-26, mask 27 (``vocab_size`` 28 counts it)."""

    vocab_size = CHAR_VOCAB_SIZE
    mask_id = CHAR_MASK_ID
    _lookup = np.full(256, -1, dtype=np.int16)
    _lookup[np.frombuffer(ALPHABET.encode(), dtype=np.uint8)] = np.arange(len(ALPHABET))

    def encode(self, obj: str) -> list[int]:
        """Normalised text -> ids; raises ValueError on a character outside the alphabet (normalise first)."""
        return self.encode_array(obj).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        ids = self._lookup[raw]
        if len(ids) and ids.min() < 0:
            bad = text[int(np.flatnonzero(ids < 0)[0])] if text.isascii() else next(c for c in text if c not in ALPHABET)
            raise ValueError(f"character {bad!r} is not in the text8 alphabet; pass text through text8_normalize")
        return ids.astype(np.uint8)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; the mask id shows as ``_`` (a finished sample has none)."""
        return "".join(ALPHABET[i] if 0 <= i < CHAR_MASK_ID else "_" for i in ids)


@lru_cache(maxsize=1)
def get_char_tokenizer() -> CharTokenizer:
    return CharTokenizer()


# --- corpora -> streams ---------------------------------------------------------------------------

Streams = dict[str, np.ndarray]  # split -> 1-D uint8 id stream


def _stream(documents: Sequence[str]) -> np.ndarray:
    """Normalised documents joined by one space -> uint8 ids (no run of two spaces at the seams)."""
    text = " ".join(text8_normalize(d).strip() for d in documents)
    return get_char_tokenizer().encode_array(text)


@lru_cache(maxsize=2)
def embedded_char_streams(tiny: bool = False) -> Streams:
    """Train/validation streams of the embedded speeches, held out by whole speech (see corpus.py)."""
    from discdistill_text.corpus import TINY_DOCUMENTS, embedded_records, validation_indices

    texts = [r["text"] for r in embedded_records()]
    if tiny:
        texts = texts[:TINY_DOCUMENTS]
    held_out = set(validation_indices(len(texts)))
    streams = {"train": _stream([t for i, t in enumerate(texts) if i not in held_out]),
               "validation": _stream([t for i, t in enumerate(texts) if i in held_out])}
    for stream in streams.values():
        stream.flags.writeable = False
    return streams


def _read_text_file(path: Path) -> str:
    from discdistill_text.corpus import _COMPRESSED

    if not path.is_file():
        raise DataError(f"{path}: no such file (give the text8 file or a UTF-8 text file)")
    opener = _COMPRESSED.get(path.suffix.lower())
    try:
        if opener is None:
            raw = path.read_bytes()
        else:
            with opener(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    if b"\x00" in raw[:1 << 20]:
        raise DataError(f"{path}: looks binary (NUL bytes); give a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None


@lru_cache(maxsize=2)
def file_char_streams(path: str, size: int, mtime_ns: int) -> Streams:
    """Streams of a local file (cached per process by path, size and mtime)."""
    stream = _stream([_read_text_file(Path(path))])
    letters = int(np.count_nonzero(stream))
    if letters < MIN_LETTERS:
        raise DataError(f"{path}: no letters a-z after the text8 protocol; give English text")
    if len(stream) >= TEXT8_TRAIN_CHARS + TEXT8_VALIDATION_CHARS:  # text8 itself: the standard split
        cut, end = TEXT8_TRAIN_CHARS, TEXT8_TRAIN_CHARS + TEXT8_VALIDATION_CHARS
    else:
        cut, end = len(stream) - max(1, int(len(stream) * FILE_VALIDATION_FRACTION)), len(stream)
    return {"train": stream[:cut], "validation": stream[cut:end]}


def char_streams(source: str | os.PathLike[str] | None) -> Streams:
    name = source.lower() if isinstance(source, str) else ""
    if source is None or name in ("sotu", "embedded"):
        return embedded_char_streams(tiny=False)
    if name == "tiny":
        return embedded_char_streams(tiny=True)
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        raise DataError(f"{path}: is a directory; the chars domain reads one text file (e.g. text8)")
    if not path.exists():
        raise DataError(f"{path}: no such file (give the text8 file or a UTF-8 text file)")
    stat = path.stat()
    return file_char_streams(str(path), stat.st_size, stat.st_mtime_ns)


def crop_windows(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    """Every ``seq_len`` window of ``stream``, one per offset: [len - seq_len + 1, seq_len], zero-copy."""
    windows = np.lib.stride_tricks.sliding_window_view(stream, seq_len)
    with warnings.catch_warnings():  # read-only on purpose: the windows share the stream's memory
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(windows)


def disjoint_blocks(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    n = len(stream) // seq_len
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len).copy())


def chars_blocks(split: str, seq_len: int, source: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """uint8 blocks [N, seq_len] of ``split``: random-crop windows for train, disjoint for validation."""
    from discdistill_text.corpus import canonical_split

    split = canonical_split(split)
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
    stream = char_streams(source)[split]
    if len(stream) < seq_len:
        raise DataError(f"{source or 'embedded corpus'}: the {split} split has {len(stream)} characters, fewer "
                        f"than seq_len={seq_len}; give more text or a shorter --seq-len")
    return crop_windows(stream, seq_len) if split == "train" else disjoint_blocks(stream, seq_len)
