"""Text corpora -> wrapped token blocks.

Every source becomes a list of documents, split into train and validation by document, tokenized
with GPT-2 BPE, joined with EOS after each document, and cut into consecutive ``seq_len``-token
blocks (MDLM's "wrap"; the last partial block is dropped). Sources:

* ``None`` / ``"sotu"``: the embedded offline corpus, 233 State of the Union addresses (1790-2021,
  about 2.07 M tokens), shipped as ``data/sotu.jsonl.xz`` with its token ids ``data/sotu.gpt2.npy.xz``.
* ``"tiny"``: the first `TINY_DOCUMENTS` addresses of it, for unit tests and smoke runs.
* ``"openwebtext"``: `datasets.load_dataset("openwebtext")` with MDLM's split (validation = the last
  100,000 documents, train = the rest), tokenized once and cached on disk under
  ``$DISCDISTILL_CACHE/text`` (default ``~/.cache/discdistill/text``) as raw uint16 token ids, and
  returned as a memory-mapped torch.uint16 tensor (not int64: ~9 B tokens would take 72 GB).
  The text domain's ``openwebtext_path`` setting (``--domain-set openwebtext_path=...``) replaces the
  dataset name (a mirror on the hub or a local copy).
* a local path: a ``.txt`` file (documents are paragraphs separated by one or more blank lines; a
  file without blank lines is one document), a ``.jsonl`` file (one JSON object per line with a
  string ``"text"`` field), or a folder (every ``*.txt`` below it, in sorted path order, each read
  as a ``.txt`` file). ``.gz``, ``.xz`` and ``.bz2`` compressed files work too.

Validation split of the embedded and local sources: every `VALIDATION_EVERY`-th document (indices
19, 39, ...), so it spans the whole corpus (all eras of the speeches) and never overlaps train; with
fewer than 20 documents the last document; with a single document the last 5% of its tokens.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from discdistill.storage import atomic_write_json
from discdistill.errors import ConfigError, DataError

from discdistill_text.tokenizer import EOS_ID, get_tokenizer

SPLITS = ("train", "validation")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation"}
VALIDATION_EVERY = 20
SINGLE_DOCUMENT_VALIDATION_FRACTION = 0.05
TINY_DOCUMENTS = 10
EMBEDDED_NAMES = ("sotu", "embedded")
#: MDLM's OpenWebText split: the last 100,000 documents of the hub's single "train" split.
OWT_VALIDATION_DOCUMENTS = 100_000
OWT_NAME = "openwebtext"
_CACHE_FORMAT = 1
_COMPRESSED = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}

Streams = dict[str, np.ndarray]  # split -> 1-D uint16 token stream (EOS after each document)


# --- splitting, tokenizing, wrapping --------------------------------------------------------------

def canonical_split(split: str) -> str:
    try:
        return _SPLIT_ALIASES[split]
    except KeyError:
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'validation'") from None


def validation_indices(n_documents: int) -> list[int]:
    """Held-out document indices: every 20th (19, 39, ...), or the last one if there are < 20."""
    held_out = list(range(VALIDATION_EVERY - 1, n_documents, VALIDATION_EVERY))
    if not held_out and n_documents >= 2:
        held_out = [n_documents - 1]
    return held_out


def token_stream(documents: Iterable[str], batch_size: int = 512) -> np.ndarray:
    """Documents -> one uint16 stream with EOS after each document (GPT-2 ids fit in 16 bits).

    Encodes ``batch_size`` documents at a time (parallel in Rust, bounded memory)."""
    tokenizer = get_tokenizer()
    eos = np.array([EOS_ID], dtype=np.uint16)
    pieces: list[np.ndarray] = []
    documents = iter(documents)
    while batch := list(itertools.islice(documents, batch_size)):
        for ids in tokenizer.encode_batch(batch):
            pieces.append(np.asarray(ids, dtype=np.uint16))
            pieces.append(eos)
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.uint16)


def split_streams(documents: list[str]) -> Streams:
    """Train/validation token streams of a list of documents (see the module docstring)."""
    if len(documents) == 1:
        stream = token_stream(documents)
        cut = len(stream) - max(1, int(len(stream) * SINGLE_DOCUMENT_VALIDATION_FRACTION))
        return {"train": stream[:cut], "validation": stream[cut:]}
    held_out = set(validation_indices(len(documents)))
    return {
        "train": token_stream(d for i, d in enumerate(documents) if i not in held_out),
        "validation": token_stream(d for i, d in enumerate(documents) if i in held_out),
    }


def wrap_blocks(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Consecutive [N, seq_len] blocks of a token stream, the last partial block dropped (a view)."""
    n_blocks = len(stream) // seq_len
    return stream[: n_blocks * seq_len].reshape(n_blocks, seq_len)


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")


def _blocks_or_error(stream: np.ndarray, seq_len: int, split: str, what: str) -> np.ndarray:
    blocks = wrap_blocks(stream, seq_len)
    if len(blocks) == 0:
        raise DataError(f"{what}: the {split} split has only {len(stream)} tokens, fewer than seq_len={seq_len}; "
                        "give more text or a shorter sequence length")
    return blocks


def load_blocks(split: str, seq_len: int, source: str | os.PathLike[str] | None = None, *,
                openwebtext_path: str = OWT_NAME) -> torch.Tensor:
    """The blocks of ``split`` from ``source``; see the module docstring. Raises `DataError`.

    ``openwebtext_path``: what ``source="openwebtext"`` loads with `datasets.load_dataset` (the hub's
    "openwebtext", another hub id, or a local folder with the same single "train" split and "text" column).

    Embedded and local sources give a fresh int64 tensor (safe to modify). ``"openwebtext"`` gives a
    zero-copy torch.uint16 view of the memory-mapped cache (as int64 it would be about 72 GB):
    index a batch and call ``.long()`` on it.
    """
    split = canonical_split(split)
    _check_seq_len(seq_len)
    if source is not None and not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"data source must be a path or a name, got {type(source).__name__}")
    name = source.lower() if isinstance(source, str) else ""  # names are strings; a Path is always a path
    if source is None or name in EMBEDDED_NAMES:
        blocks = _blocks_or_error(embedded_streams(tiny=False)[split], seq_len, split, "embedded corpus")
    elif name == "tiny":
        blocks = _blocks_or_error(embedded_streams(tiny=True)[split], seq_len, split, "tiny corpus")
    elif name == OWT_NAME:
        stream = openwebtext_stream(split, dataset_path=openwebtext_path)
        return torch.from_numpy(_blocks_or_error(stream, seq_len, split, OWT_NAME))
    else:
        path = Path(source).expanduser()
        blocks = _blocks_or_error(_local_streams(*_fingerprint(path))[split], seq_len, split, str(path))
    return torch.from_numpy(blocks.astype(np.int64))


# --- the embedded corpus --------------------------------------------------------------------------

@lru_cache(maxsize=1)
def embedded_records() -> tuple[dict[str, Any], ...]:
    """The State of the Union records {"year", "president", "party", "text"}, in chronological order."""
    path = resources.files("discdistill_text") / "data" / "sotu.jsonl.xz"
    with path.open("rb") as raw, lzma.open(raw, "rt", encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines if line.strip())


#: Speeches whose shipped ids are checked against the tokenizer at load (short ones, spread out).
_CHECKED_SPEECHES = (0, 116, 232)


def _embedded_documents_ids() -> list[np.ndarray]:
    """Per-speech token ids (each ending in EOS): the shipped ids, or a fresh tokenization.

    ``data/sotu.gpt2.npy.xz`` (built by ``scripts/build_sotu_corpus.py``) saves ~3.5-15 s of
    tokenization per process. It is used only if it has one EOS per speech and matches the tokenizer
    on a few speeches; otherwise the text is tokenized (with a warning).
    """
    records = embedded_records()
    try:
        path = resources.files("discdistill_text") / "data" / "sotu.gpt2.npy.xz"
        with path.open("rb") as raw, lzma.open(raw) as f:
            ids = np.load(io.BytesIO(f.read()), allow_pickle=False)
        ends = np.flatnonzero(ids == EOS_ID) + 1
        if ids.dtype != np.uint16 or ids.ndim != 1 or len(ends) != len(records) or ends[-1] != len(ids):
            raise ValueError("shape or document count differs from the text")
        documents = np.split(ids, ends[:-1])
        tokenizer = get_tokenizer()
        for i in _CHECKED_SPEECHES:
            if documents[i][:-1].tolist() != tokenizer.encode(records[i]["text"]):
                raise ValueError(f"speech {i} differs from the tokenizer's output")
        return documents
    except (OSError, ValueError, lzma.LZMAError) as err:
        warnings.warn(f"shipped token ids of the embedded corpus not used ({err}); tokenizing the text",
                      stacklevel=3)
        return [token_stream([r["text"]]) for r in records]


@lru_cache(maxsize=2)
def embedded_streams(tiny: bool = False) -> Streams:
    """Token streams of the embedded corpus (cached per process; about 0.5 s from the shipped ids)."""
    documents = _embedded_documents_ids()
    if tiny:
        documents = documents[:TINY_DOCUMENTS]
    held_out = set(validation_indices(len(documents)))
    streams = {
        "train": np.concatenate([d for i, d in enumerate(documents) if i not in held_out]),
        "validation": np.concatenate([d for i, d in enumerate(documents) if i in held_out]),
    }
    for stream in streams.values():
        stream.flags.writeable = False
    return streams


# --- local files ----------------------------------------------------------------------------------

def _fingerprint(path: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """(path, ((file, size, mtime_ns), ...)): the cache key of a local source; checks it exists."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass an existing .txt, .jsonl or folder of .txt "
                        "files with --data, or leave --data out to use the embedded corpus")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) == ".txt")
        if not files:
            raise DataError(f"{path}: the folder holds no .txt files")
    else:
        files = [path]
    try:
        stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    return str(path), stats


def _kind(path: Path) -> str:
    """The format suffix, looking through a compression suffix: a.txt.gz -> '.txt'."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path) -> IO[str]:
    opener: Callable[..., IO[str]] = _COMPRESSED.get(path.suffix.lower(), open)  # type: ignore[assignment]
    return opener(path, "rt", encoding="utf-8")


def _read_txt(path: Path) -> list[str]:
    with _open_text(path) as f:
        text = f.read()
    return [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]


def _read_jsonl(path: Path) -> list[str]:
    documents = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or "text" not in record:
                raise DataError(f"{path}:{lineno}: the record has no \"text\" field")
            if not isinstance(record["text"], str):
                raise DataError(f"{path}:{lineno}: \"text\" is {type(record['text']).__name__}, not a string")
            if record["text"].strip():
                documents.append(record["text"])
    return documents


def read_documents(path: Path) -> list[str]:
    """The documents of one local file (.txt / .jsonl, optionally compressed). Raises `DataError`."""
    kind = _kind(path)
    readers = {".txt": _read_txt, ".jsonl": _read_jsonl}
    if kind not in readers:
        raise DataError(f"{path}: unsupported file type {kind or '(none)'!r}; use .txt, .jsonl or a folder of "
                        ".txt files")
    try:
        return readers[kind](path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise DataError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None


@lru_cache(maxsize=4)
def _local_streams(root: str, files: tuple[tuple[str, int, int], ...]) -> Streams:
    documents: list[str] = []
    for name, _size, _mtime in files:
        documents.extend(read_documents(Path(name)))
    if not documents:
        raise DataError(f"{root}: no text found (the file is empty)")
    streams = split_streams(documents)
    for stream in streams.values():
        stream.flags.writeable = False
    return streams


# --- OpenWebText ----------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where tokenized corpora are kept: $DISCDISTILL_CACHE/text, else ~/.cache/discdistill/text."""
    base = os.environ.get("DISCDISTILL_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "discdistill") / "text"


def _owt_hub_split(split: str) -> str:
    n = OWT_VALIDATION_DOCUMENTS
    return f"train[:-{n}]" if split == "train" else f"train[-{n}:]"


def _load_openwebtext(split: str, dataset_path: str) -> Any:
    hub_split = _owt_hub_split(split)
    try:
        import datasets

        return datasets.load_dataset(dataset_path, split=hub_split)
    except Exception as err:  # noqa: BLE001 - offline mode, DNS, HTTP, missing dataset: all mean "cannot get it"
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        hint = ""
        if "scripts are no longer supported" in reason:
            hint = ("this datasets version cannot run the hub's loading script; point --domain-set "
                    "openwebtext_path=... at a script-free copy (hub id or local folder), or ")
        raise DataError(f"cannot load OpenWebText ({dataset_path!r}) through datasets ({reason}); {hint}"
                        "pass a local .txt/.jsonl file or folder with --data, or leave --data out to use the "
                        "embedded corpus") from err


def _cache_paths(split: str, dataset_path: str) -> tuple[Path, Path]:
    stem = f"{OWT_NAME}-{split}-{OWT_VALIDATION_DOCUMENTS}-gpt2"
    if dataset_path != OWT_NAME:
        stem += "-" + hashlib.sha256(dataset_path.encode()).hexdigest()[:12]
    return cache_dir() / f"{stem}.u16", cache_dir() / f"{stem}.json"


def _read_cache(data_path: Path, meta_path: Path) -> np.ndarray | None:
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _CACHE_FORMAT or data_path.stat().st_size != 2 * int(meta["tokens"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if int(meta["tokens"]) == 0:
        return np.empty(0, dtype=np.uint16)
    # Copy-on-write mapping: torch gets a writable array (no warning) and the file is never changed.
    return np.memmap(data_path, dtype=np.uint16, mode="c")


def write_token_cache(texts: Iterable[list[str]], data_path: Path, meta_path: Path,
                      info: dict[str, Any] | None = None) -> np.ndarray:
    """Tokenize batches of documents into a uint16 file (EOS after each document), atomically."""
    data_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=data_path.name + ".", suffix=".tmp", dir=data_path.parent)
    tokens = documents = 0
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for batch in texts:
                stream = token_stream(batch)
                out.write(stream.tobytes())
                digest.update(stream.tobytes())
                tokens += len(stream)
                documents += len(batch)
        os.replace(tmp_name, data_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    meta = {"format": _CACHE_FORMAT, "tokens": tokens, "documents": documents, "dtype": "uint16",
            "tokenizer": "gpt2", "sha256": digest.hexdigest(), **(info or {})}
    atomic_write_json(meta_path, meta)
    if tokens == 0:
        return np.empty(0, dtype=np.uint16)
    return np.memmap(data_path, dtype=np.uint16, mode="c")


def openwebtext_stream(split: str, batch_size: int = 1024, *, dataset_path: str = OWT_NAME) -> np.ndarray:
    """OpenWebText's token stream for ``split`` (memory-mapped; tokenized on first use, ~9 B tokens)."""
    data_path, meta_path = _cache_paths(split, dataset_path)
    cached = _read_cache(data_path, meta_path)
    if cached is not None:
        return cached
    dataset = _load_openwebtext(split, dataset_path)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        def tqdm(x: Any, **_: Any) -> Any:
            return x
    n_batches = (len(dataset) + batch_size - 1) // batch_size
    batches = (batch["text"] for batch in dataset.iter(batch_size=batch_size))
    batches = tqdm(batches, total=n_batches, desc=f"tokenizing OpenWebText {split}", unit="batch")
    return write_token_cache(batches, data_path, meta_path,
                             {"source": dataset_path, "hub_split": _owt_hub_split(split)})
