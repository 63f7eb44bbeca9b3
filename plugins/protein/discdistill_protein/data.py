"""Data: where sequences come from, how they are split, and how they become fixed-size windows.

Sources (``Domain.dataset(split, seq_len, source)``):

* ``None``: the embedded UniProt subset (4,000 distinct UniProtKB sequences, CC BY 4.0) shipped in
  ``discdistill_protein/data/`` so that everything runs offline.
* a path: a local protein FASTA file (plain or gzip), validated by `read_fasta`.
* ``"uniref50"`` (or ``"hf:<owner>/<name>"``): a UniRef50 dataset on the Hugging Face hub, streamed
  with `datasets.load_dataset`; needs the internet and raises a `DataError` that says what to do
  when it is not there.

Splits of the embedded set and of local files: exact duplicate sequences are removed (first kept),
then record ``i`` (0-based, file order) is held out for validation when ``i % 20 == 19``, so the
validation set is 5 % of the records, deterministic, and shares no sequence with training. A file
with fewer than 20 records holds out its last record. Hub datasets use their own splits.

Windows: every sequence is framed as ``<bos> residues <eos>`` and right-padded with ``<pad>`` to
``seq_len``. A framed sequence longer than ``seq_len`` is cropped to a window of exactly
``seq_len`` tokens whose start is drawn uniformly from a numpy PCG64 generator seeded by
``(seed, split)``: the crop is drawn once per dataset build, so the same seed always gives the
same tensor. The crop is taken from the *framed* sequence, so a window keeps ``<bos>`` only when
it starts at the real N-terminus and ``<eos>`` only when it reaches the real C-terminus; ``<bos>``
and ``<eos>`` therefore always mean "true start" and "true end", and a window without ``<eos>``
decodes to a fragment (all its residues).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from discdistill.errors import ConfigError, DataError
from discdistill_protein.fasta import ProteinRecord
from discdistill_protein.tokenizer import ProteinTokenizer, first_invalid, invalid_character_message

#: File name of the embedded subset inside the package's data folder.
EMBEDDED_FILE = "uniprot_subset.fasta.gz"
#: Every VALIDATION_EVERY-th record (the last of each block) is held out for validation.
VALIDATION_EVERY = 20
#: Hub dataset used for source="uniref50" (UniRef50 release 2023_01; train/validation/test, column "text").
UNIREF50_HUB_ID = "agemagician/uniref50"
#: Records taken from the head of a hub stream per split when no limit is given.
HUB_DEFAULT_RECORDS = {"train": 200_000, "validation": 5_000}
SPLITS = ("train", "validation")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation"}


def embedded_path() -> Path:
    """Path of the shipped UniProt subset (gzip FASTA)."""
    return Path(str(files("discdistill_protein") / "data" / EMBEDDED_FILE))


def canonical_split(split: str) -> str:
    try:
        return _SPLIT_ALIASES[split]
    except KeyError:
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'validation'") from None


def deduplicate(records: Sequence[ProteinRecord]) -> list[ProteinRecord]:
    """Drop records whose sequence appeared before (first occurrence kept, order preserved)."""
    seen: set[str] = set()
    unique = []
    for record in records:
        if record.sequence not in seen:
            seen.add(record.sequence)
            unique.append(record)
    return unique


def split_records(records: Sequence[ProteinRecord]) -> dict[str, list[ProteinRecord]]:
    """Deterministic held-out split of already-deduplicated records (see the module docstring)."""
    n = len(records)
    if n >= VALIDATION_EVERY:
        held = [i % VALIDATION_EVERY == VALIDATION_EVERY - 1 for i in range(n)]
    else:
        held = [n >= 2 and i == n - 1 for i in range(n)]
    return {
        "train": [r for r, h in zip(records, held, strict=True) if not h],
        "validation": [r for r, h in zip(records, held, strict=True) if h],
    }


def load_hub_records(dataset_id: str, split: str, max_records: int | None = None) -> list[ProteinRecord]:
    """The first ``max_records`` sequences of a hub dataset split (streamed); `DataError` when offline."""
    limit = max_records if max_records is not None else HUB_DEFAULT_RECORDS[split]
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"loading {dataset_id!r} from the Hugging Face hub needs the 'datasets' package: "
                        "pip install 'discdistill-protein[hub]'; or pass a local FASTA file (--data PATH), "
                        "or omit --data to use the embedded UniProt subset") from err
    hub_splits = {"train": ("train",), "validation": ("validation", "valid", "test")}[split]
    last_error: Exception | None = None
    for hub_split in hub_splits:
        try:
            stream = datasets.load_dataset(dataset_id, split=hub_split, streaming=True)
            rows = list(itertools.islice(iter(stream), limit))
        except Exception as err:  # noqa: BLE001 - network, auth, missing dataset: all mean "cannot load"
            if isinstance(err, ValueError) and "split" in str(err).lower():
                last_error = err  # unknown split name: try the next alias
                continue
            raise DataError(f"could not load {dataset_id!r} ({split}) from the Hugging Face hub: {err!r}. "
                            "Without internet access pass a local protein FASTA file (--data PATH), or omit "
                            "--data to use the embedded UniProt subset.") from err
        break
    else:
        raise DataError(f"{dataset_id!r} has no {split} split (tried {', '.join(hub_splits)}): {last_error}")
    if not rows:
        raise DataError(f"{dataset_id!r} ({hub_split}) returned no rows")
    column = next((c for c in ("text", "sequence", "seq") if c in rows[0]), None)
    if column is None:
        raise DataError(f"{dataset_id!r} has no sequence column (looked for text, sequence, seq; "
                        f"found {sorted(rows[0])})")
    records = []
    for index, row in enumerate(rows, start=1):
        seq = str(row[column]).strip().upper().removesuffix("*")
        rid = str(row.get("id") or row.get("name") or f"{hub_split}_{index}")
        bad = first_invalid(seq)
        where = f"{dataset_id!r} row #{index} ({rid!r})"
        if not seq:
            raise DataError(f"{where} has no sequence")
        if bad is not None:
            raise DataError(invalid_character_message(where, *bad))
        records.append(ProteinRecord(rid, rid, seq))
    return records


def frame_windows(sequences: Sequence[np.ndarray], seq_len: int, tokenizer: ProteinTokenizer,
                  rng: np.random.Generator) -> torch.Tensor:
    """Residue-id arrays -> LongTensor [N, seq_len] of ``<bos> residues <eos> <pad>...`` windows.

    Framed sequences longer than ``seq_len`` are cropped to a uniformly placed window (one draw from
    ``rng`` per long sequence, in order), which keeps BOS/EOS only where they are the true ends.
    """
    if seq_len < 3:
        raise ConfigError(f"seq_len={seq_len} is too short for proteins: a window needs <bos>, a residue and <eos>")
    out = np.full((len(sequences), seq_len), tokenizer.pad_id, dtype=np.int64)
    for row, residues in enumerate(sequences):
        framed = np.concatenate(([tokenizer.bos_id], residues, [tokenizer.eos_id]))
        if framed.size <= seq_len:
            out[row, : framed.size] = framed
        else:
            start = int(rng.integers(0, framed.size - seq_len + 1))
            out[row] = framed[start: start + seq_len]
    return torch.from_numpy(out)


def crop_generator(seed: int, split: str) -> np.random.Generator:
    """The generator that places the crops of one split (independent streams per split)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLITS.index(split)])))


def sample_lengths(lengths: torch.Tensor | Sequence[int], num_samples: int, max_length: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``num_samples`` lengths uniformly from the empirical ``lengths`` that fit ``max_length``.

    Drawing from the lengths that fit (rather than clipping) keeps the generated length distribution
    equal to the training distribution conditioned on fitting in the window. If none fits, every
    length is clipped to ``max_length``.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
    if lengths.numel() == 0:
        raise DataError("no training lengths to sample from")
    fits = lengths[lengths <= max_length]
    pool = fits if fits.numel() else lengths.clamp(max=max_length)
    device = generator.device if generator is not None else torch.device("cpu")
    index = torch.randint(pool.numel(), (num_samples,), generator=generator, device=device).cpu()
    return pool[index]


def length_prefilled_init(lengths: torch.Tensor | Sequence[int], seq_len: int,
                          tokenizer: ProteinTokenizer) -> torch.Tensor:
    """Initial sampler state for drawn lengths: ``<bos>``, ``length`` masks, ``<eos>``, ``<pad>``...

    Returns z_init LongTensor [B, seq_len] for `discdistill.sampling.sample(..., z_init=...)`. Only
    the ``length`` residue positions are masked; everything else is fixed, so the sampler fills
    exactly that many residues. Lengths are clipped to ``seq_len - 2`` (the window's residue
    capacity with both BOS and EOS present).
    """
    if seq_len < 3:
        raise ConfigError(f"seq_len={seq_len} is too short for proteins: a window needs <bos>, a residue and <eos>")
    lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1, 1).clamp(0, seq_len - 2)
    pos = torch.arange(seq_len).unsqueeze(0)
    z = torch.full((lengths.shape[0], seq_len), tokenizer.pad_id, dtype=torch.long)
    z = torch.where(pos <= lengths, torch.full_like(z, tokenizer.mask_id), z)
    z = torch.where(pos == lengths + 1, torch.full_like(z, tokenizer.eos_id), z)
    z[:, 0] = tokenizer.bos_id
    return z
