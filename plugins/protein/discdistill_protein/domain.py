"""The `protein` domain: what the core sees of proteins, through `discdistill.interfaces.Domain`.

Variable length, two modes (the ``length_mode`` setting: ``--domain-set length_mode=sampled`` on the
command line, ``ProteinDomain(length_mode="sampled")`` in Python; recorded in checkpoints and reports):

* ``"learned"`` (default): the model
  learns where a protein ends. Training windows are ``<bos> residues <eos> <pad>...``; sampling
  starts from all-mask (``initial_state`` returns None) and decoding cuts at the first ``<eos>``.
* ``"sampled"`` (EvoDiff-style): a length is drawn for each sample from the empirical training
  length distribution (restricted to lengths that fit the window), and ``initial_state`` returns a
  z_init in which only that many residue positions are masked, ``<bos>``/``<eos>``/``<pad>`` fixed.
  The sampler then fills exactly that many positions. (Decoding still cuts at the first ``<eos>``,
  so a model that writes ``<eos>`` inside the span yields a shorter protein.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from pydantic import Field

from discdistill.config import StrictModel, build
from discdistill.errors import DataError
from discdistill.interfaces import Domain
from discdistill_protein import metrics as protein_metrics_module
from discdistill_protein.data import (
    UNIREF50_HUB_ID,
    canonical_split,
    crop_generator,
    deduplicate,
    embedded_path,
    frame_windows,
    length_prefilled_init,
    load_hub_records,
    sample_lengths,
    split_records,
)
from discdistill_protein.fasta import ProteinRecord, format_metadata, read_fasta, write_fasta
from discdistill_protein.tokenizer import ProteinTokenizer

LengthMode = Literal["learned", "sampled"]


class ProteinSettings(StrictModel):
    """The protein domain's settings (``--domain-set KEY=VALUE``)."""

    length_mode: LengthMode = Field("learned", description='"learned" (EOS inside the window) or "sampled" '
                                    "(a length drawn per sample, see the module doc).")
    length_source: str | None = Field(None, description='Where "sampled" mode draws lengths from: None (the '
                                      'embedded subset), a FASTA path or "uniref50".')
    seed: int = Field(0, description="Seeds the crop positions of `dataset` (one draw per long sequence).")
    strict: bool = Field(True, description="Reject characters outside the tokenizer policy.")
    hub_max_records: int | None = Field(None, gt=0, description="Records streamed from the hub per split "
                                        "(default 200,000 / 5,000).")
    compute_plddt: bool = Field(False, description="Add plddt to the metrics when a structure predictor is importable.")


class ProteinDomain(Domain):
    """Protein sequences: residue tokenizer, FASTA in and out, UniProt subset offline, UniRef50 online."""

    name: ClassVar[str] = "protein"
    description: ClassVar[str] = ("Variable-length protein sequences: 30-id residue vocabulary, FASTA in and out, "
                                  "embedded UniProt subset (CC BY 4.0) offline, UniRef50 from the hub online.")
    default_seq_len: ClassVar[int] = 256
    default_preset: ClassVar[str] = "tiny"
    sample_suffix: ClassVar[str] = ".fasta"

    Settings = ProteinSettings

    def __init__(self, settings: ProteinSettings | None = None, **fields: Any) -> None:
        """Cheap: nothing is read until data is asked for. ``fields`` override single settings
        (``ProteinDomain(length_mode="sampled")``)."""
        base = settings.model_dump() if settings is not None else {}
        super().__init__(build(ProteinSettings, {**base, **fields}))
        self._tokenizer = ProteinTokenizer(strict=self.settings.strict)
        self._records: dict[tuple[str, str], list[ProteinRecord]] = {}

    # -- configuration: self.settings; length_mode also as a validated attribute -------------------
    @property
    def length_mode(self) -> LengthMode:
        return self.settings.length_mode

    @length_mode.setter
    def length_mode(self, mode: str) -> None:
        self.settings = build(ProteinSettings, {**self.settings.model_dump(), "length_mode": mode})

    def tokenizer(self) -> ProteinTokenizer:
        return self._tokenizer

    # -- data -----------------------------------------------------------------------------------
    def records(self, split: str, source: str | os.PathLike[str] | None = None) -> list[ProteinRecord]:
        """Validated records of ``split`` from ``source`` (cached per source and split)."""
        split = canonical_split(split)
        hub_id = _hub_id(source)
        key = (hub_id or (str(Path(source).resolve()) if source is not None else "<embedded>"), split)
        if key not in self._records:
            if hub_id is not None:
                self._records[key] = load_hub_records(hub_id, split, self.settings.hub_max_records)
            else:
                path = embedded_path() if source is None else Path(source)
                parts = split_records(deduplicate(read_fasta(path, strict=self.settings.strict)))
                for name, part in parts.items():
                    self._records[(key[0], name)] = part
        records = self._records[key]
        if not records:
            raise DataError(f"{key[0]} has no {split} records: a file needs at least 2 distinct sequences "
                            "so that one can be held out for validation")
        return records

    def dataset(self, split: str, seq_len: int, source: str | None = None, *, seed: int | None = None) -> torch.Tensor:
        """LongTensor [N, seq_len]: ``<bos> residues <eos> <pad>...``, long sequences randomly cropped.

        The crops are drawn once per call from a generator seeded by ``(seed, split)`` (``seed``
        defaults to the domain's), so a given seed always returns the same tensor.
        """
        split = canonical_split(split)
        records = self.records(split, source)
        tok = self._tokenizer
        sequences = [tok.encode_array(r.sequence, record_id=r.id) for r in records]
        rng = crop_generator(self.settings.seed if seed is None else seed, split)
        return frame_windows(sequences, seq_len, tok, rng)

    def length_distribution(self, split: str = "train", source: str | None = None) -> torch.Tensor:
        """LongTensor of the full (uncropped) residue counts of the records of ``split``."""
        return torch.tensor([len(r.sequence) for r in self.records(split, source)], dtype=torch.long)

    def initial_state(self, num_samples: int, seq_len: int,
                      generator: torch.Generator | None = None) -> torch.Tensor | None:
        """z_init for the sampler: None in "learned" mode; prefilled lengths in "sampled" mode."""
        if self.length_mode == "learned":
            return None
        lengths = sample_lengths(self.length_distribution("train", self.settings.length_source), num_samples,
                                 max_length=seq_len - 2, generator=generator)
        return length_prefilled_init(lengths, seq_len, self._tokenizer)

    def forbidden_tokens(self) -> tuple[int, ...]:
        """None in "learned" mode; in "sampled" mode the special tokens (PAD, EOS, BOS, UNK), so the
        prefilled span becomes exactly its drawn number of residues."""
        if self.length_mode == "learned":
            return ()
        tok = self._tokenizer
        return (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id)

    # -- samples --------------------------------------------------------------------------------
    def write_samples(self, samples: list[Any], path: Path, metadata: dict[str, Any]) -> Path:
        """FASTA (Bio.SeqIO) with ids sample_0..N-1 and ``key=value`` metadata in each description.

        Written atomically (temporary file + os.replace). A path without a suffix gets ".fasta".
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(self.sample_suffix)
        described = format_metadata(metadata)
        records = [ProteinRecord(f"sample_{i}", f"sample_{i} {described}".rstrip(), str(seq))
                   for i, seq in enumerate(samples)]
        return write_fasta(records, path)

    def read_samples(self, path: Path) -> list[str]:
        """The sequences of a FASTA file (`write_samples` output); no nucleotide check on samples."""
        return [r.sequence for r in read_fasta(path, strict=self.settings.strict, check_nucleotide=False)]

    def metrics(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Sequence metrics (see `discdistill_protein.metrics`) of decoded sample ids vs reference ids.

        Also ``eos_rate``: the fraction of sample rows that contain an ``<eos>`` (how often the model
        finished a protein inside the window). Reference windows that were cropped decode to
        fragments, so pass uncropped (short enough) reference sequences for a fair length metric.
        """
        tok = self._tokenizer
        sample_seqs = self.decode_samples(samples)
        reference_seqs = self.decode_samples(reference)
        result = protein_metrics_module.protein_metrics(sample_seqs, reference_seqs)
        result["eos_rate"] = float((samples == tok.eos_id).any(-1).float().mean()) if samples.numel() else float("nan")
        if self.settings.compute_plddt:
            value = protein_metrics_module.plddt(sample_seqs)
            if value is not None:
                result["plddt"] = value
        return result

    def plddt(self, samples: list[str]) -> float | None:
        """Mean pLDDT of decoded samples, or None when no structure predictor is importable."""
        return protein_metrics_module.plddt(samples)


def _hub_id(source: str | os.PathLike[str] | None) -> str | None:
    """Hub dataset id for "uniref50" / "hf:owner/name" sources; None for paths (an existing file wins)."""
    if not isinstance(source, str) or os.path.exists(source):
        return None
    if source.lower() == "uniref50":
        return UNIREF50_HUB_ID
    if source.startswith("hf:"):
        return source[3:]
    return None

