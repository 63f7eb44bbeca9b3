"""The protein tokenizer: one id per residue, four special ids in front, the mask id last.

Vocabulary (30 ids, ``vocab_size`` includes the mask)::

    0 <pad>   1 <eos>   2 <bos>   3 <unk>
    4..23     A C D E F G H I K L M N P Q R S T V W Y   (the 20 standard residues)
    24..28    X B U Z O                                  (unknown, Asx, Sec, Glx, Pyl)
    29 <mask>                                            (last, as in MDLM: mask_id = vocab_size - 1)

Policy for input letters (why: a training set must not silently change, and a user must learn
*which* record is bad and *where*):

* Input is case-insensitive; output is always upper case.
* X, B, U, Z and O are real IUPAC/UniProt letters and keep their own ids (they are rare: about 0.03 %
  of the residues of the shipped UniProt subset).
* One ``*`` at the very end of a record is a translated stop codon and is stripped.
* Anything else (another letter such as J, a digit, a gap ``-`` or ``.``, a ``*`` inside the
  sequence) is an error in strict mode (the default): `DataError` names the record id and the
  1-based position (counted after FASTA line breaks and blanks are removed). With ``strict=False``
  such characters map to ``<unk>``.

`decode` cuts at the first ``<eos>``, skips ``<pad>`` and ``<bos>``, and renders ``<mask>`` and
``<unk>`` as ``X`` (IUPAC "any residue") so that whatever a sampler leaves behind is still a valid
FASTA sequence. Neither id can come out of `encode` on valid input, so ``decode(encode(s)) == s``
exactly for every valid upper-case sequence ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from discdistill.errors import DataError, ModelMismatchError
from discdistill.interfaces import Tokenizer

#: The 20 standard amino acids, alphabetical by one-letter code.
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
#: Letters UniProt uses beyond the standard 20: unknown, Asx (D/N), selenocysteine, Glx (E/Q), pyrrolysine.
EXTRA_RESIDUES = "XBUZO"
#: Every residue letter with its own id, in id order.
RESIDUES = STANDARD_RESIDUES + EXTRA_RESIDUES
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
MASK_TOKEN = "<mask>"
#: Letters that, in bulk, mean the file holds nucleic acids rather than protein.
NUCLEOTIDE_LETTERS = "ACGTUN"

_ALLOWED = frozenset(RESIDUES)


class ProteinTokenizer(Tokenizer):
    """Residue-level tokenizer (see the module docstring for the vocabulary and the letter policy)."""

    PAD, EOS, BOS, UNK = 0, 1, 2, 3
    FIRST_RESIDUE = len(SPECIAL_TOKENS)

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.tokens: tuple[str, ...] = (*SPECIAL_TOKENS, *RESIDUES, MASK_TOKEN)
        # byte -> id lookup (upper and lower case); everything else -> unk
        self._byte_to_id = np.full(256, self.UNK, dtype=np.int64)
        for offset, letter in enumerate(RESIDUES):
            self._byte_to_id[ord(letter)] = self.FIRST_RESIDUE + offset
            self._byte_to_id[ord(letter.lower())] = self.FIRST_RESIDUE + offset
        # id -> character for decoding; specials that survive filtering render as 'X'
        self._id_to_char = np.array(["X"] * len(self.tokens), dtype="<U1")
        for offset, letter in enumerate(RESIDUES):
            self._id_to_char[self.FIRST_RESIDUE + offset] = letter

    # -- the contract -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    @property
    def pad_id(self) -> int:
        return self.PAD

    @property
    def eos_id(self) -> int:
        return self.EOS

    @property
    def bos_id(self) -> int:
        return self.BOS

    @property
    def unk_id(self) -> int:
        return self.UNK

    def encode(self, obj: Any, record_id: str | None = None) -> list[int]:
        """A sequence string -> residue ids only (no BOS/EOS; the domain frames sequences)."""
        return self.encode_array(obj, record_id=record_id).tolist()

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Ids -> sequence: cut at the first EOS, drop PAD and BOS, render MASK and UNK as 'X'."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        arr = arr.astype(np.int64, copy=False).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise ModelMismatchError(f"token id {bad} is outside the protein vocabulary (0..{self.vocab_size - 1}); "
                                     "the model was trained with a different tokenizer")
        ends = np.flatnonzero(arr == self.EOS)
        if ends.size:
            arr = arr[: ends[0]]
        arr = arr[(arr != self.PAD) & (arr != self.BOS)]
        return "".join(self._id_to_char[arr].tolist())

    # -- helpers ------------------------------------------------------------------------------
    def normalize(self, seq: str, record_id: str | None = None, strict: bool | None = None) -> str:
        """Upper-case ``seq``, strip one final '*' and, in strict mode, reject letters outside the policy."""
        strict = self.strict if strict is None else strict
        seq = seq.upper()
        if seq.endswith("*"):
            seq = seq[:-1]
        bad = first_invalid(seq) if strict else None
        if bad is not None:
            position, char = bad
            where = f"record {record_id!r}" if record_id is not None else "sequence"
            raise DataError(invalid_character_message(where, position, char))
        return seq

    def encode_array(self, seq: str, record_id: str | None = None) -> np.ndarray:
        """Like `encode` but returns an int64 numpy array (fast path for whole data sets)."""
        seq = self.normalize(seq, record_id=record_id)
        try:
            raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:  # only reachable with strict=False
            return np.array([self._byte_to_id[ord(c)] if ord(c) < 256 else self.UNK for c in seq], dtype=np.int64)
        return self._byte_to_id[raw]


def first_invalid(seq: str) -> tuple[int, str] | None:
    """(1-based position, character) of the first character outside the policy in upper-case ``seq``."""
    if _ALLOWED.issuperset(seq):
        return None
    return next((i, c) for i, c in enumerate(seq, start=1) if c not in _ALLOWED)


def invalid_character_message(where: str, position: int, char: str) -> str:
    """The `DataError` text for a bad character; ``where`` names the record ("record 'sp|P1|X'")."""
    hint = ""
    if char in "-.":
        hint = " It looks like an alignment: remove the gap characters ('-', '.') first."
    elif char == "*":
        hint = " A '*' (stop) is only allowed as the last character; split or trim the record."
    elif char.isdigit() or char.isspace():
        hint = " Sequence lines must hold residue letters only (no numbering or spaces)."
    return (f"{where}: invalid character {char!r} at position {position} (1-based). Allowed: the 20 standard "
            f"amino acids, X B U Z O, and one final '*'.{hint} Fix or remove the record.")
