"""FASTA in and out, through Biopython's `Bio.SeqIO`, with errors a user can act on.

Reading (`read_fasta`) is all-or-nothing: every record is checked, every problem is collected (the
first few are quoted, with the record id and 1-based position), and the call raises `DataError`
without returning a partial set, so nothing is silently dropped. Plain and gzip files are both
read; gzip is recognised by its magic bytes (1f 8b), not by the file name.

Writing (`write_fasta`) goes to a temporary file in the target folder that is then moved over
the target with `os.replace`, so an interrupted run never leaves a half-written file where a good
one was. A target ending in ``.gz`` is written gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from discdistill.errors import DataError
from discdistill.storage import atomic_write_bytes
from discdistill_protein.tokenizer import (
    NUCLEOTIDE_LETTERS,
    first_invalid,
    invalid_character_message,
)

GZIP_MAGIC = b"\x1f\x8b"
#: Above this fraction of A/C/G/T/U/N residues (over the whole file) the file is taken for DNA/RNA.
NUCLEOTIDE_FRACTION_LIMIT = 0.90
#: ...but only judged once the file holds at least this many residues.
NUCLEOTIDE_MIN_RESIDUES = 20
#: How many problems a `DataError` quotes before summarising the rest as a count.
MAX_QUOTED_PROBLEMS = 5


@dataclass(frozen=True)
class ProteinRecord:
    """One validated record: ``sequence`` is upper case, without a final stop '*'."""

    id: str
    description: str
    sequence: str


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as raw:
        return raw.read(2) == GZIP_MAGIC


def _open_text(path: Path) -> io.TextIOBase:
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _check_head(path: Path) -> None:
    """Empty, binary or non-FASTA files get their own message before Biopython sees them."""
    try:
        with _open_text(path) as handle:
            head = handle.read(1 << 16)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file ({err.reason} at byte {err.start}); "
                        "expected protein FASTA (plain or gzip)") from err
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} could not be read as gzip ({err}); the file is corrupt or truncated") from err
    if "\x00" in head:
        raise DataError(f"{path} is a binary file, not FASTA; expected protein FASTA (plain or gzip)")
    if not head.strip():
        raise DataError(f"{path} is empty: a FASTA file needs at least one '>' header line and a sequence")
    first = next(line for line in head.splitlines() if line.strip())
    if not first.lstrip().startswith(">"):
        shown = first.strip()[:60]
        raise DataError(f"{path} is not FASTA: its first non-empty line {shown!r} does not start with '>'. "
                        "Each record must begin with a '>' header line followed by sequence lines.")


def _iter_seqrecords(path: Path) -> Iterator[SeqRecord]:
    try:
        with _open_text(path) as handle:
            yield from SeqIO.parse(handle, "fasta")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file ({err.reason} at byte {err.start})") from err
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} could not be read ({err}); the file is corrupt or truncated") from err
    except ValueError as err:
        raise DataError(f"{path} is not valid FASTA: {err}") from err


def _problem_report(path: Path, problems: list[str], total: int) -> str:
    """One line (the CLI's error contract), the first problems in full, then how many more."""
    more = f"; ... and {total - len(problems)} more" if total > len(problems) else ""
    noun = "problem" if total == 1 else "problems"
    return f"{path}: {total} {noun} found; nothing was loaded. Fix the file and retry: {'; '.join(problems)}{more}"


def read_fasta(path: str | os.PathLike[str], *, strict: bool = True,
               check_nucleotide: bool = True) -> list[ProteinRecord]:
    """Read and validate a protein FASTA file (plain or gzip); raise `DataError` on any problem.

    Checks: the file exists and is text; it is not empty; it starts with a '>' header; every record
    has a sequence; every character follows the tokenizer's policy (strict mode); and the residues
    are not overwhelmingly A/C/G/T/U/N (a nucleotide file given as protein). With ``strict=False``
    characters outside the policy are kept (the tokenizer then maps them to ``<unk>``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass an existing protein FASTA file (plain or .gz)")
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass a protein FASTA file (plain or .gz)")
    _check_head(path)
    records: list[ProteinRecord] = []
    problems: list[str] = []
    n_problems = 0
    nucleotide = residues = 0
    for index, rec in enumerate(_iter_seqrecords(path), start=1):
        where = f"record {rec.id!r} (#{index} in the file)"
        seq = str(rec.seq)
        problem = None
        if not seq.strip("*"):
            problem = f"{where} has no sequence"
        else:
            upper = seq.upper()
            if upper.endswith("*"):
                upper = upper[:-1]
            bad = first_invalid(upper) if strict else None
            if bad is not None:
                problem = invalid_character_message(where, *bad)
        if problem is not None:
            n_problems += 1
            if len(problems) < MAX_QUOTED_PROBLEMS:
                problems.append(problem)
            continue
        residues += len(upper)
        nucleotide += sum(upper.count(c) for c in NUCLEOTIDE_LETTERS)
        records.append(ProteinRecord(rec.id, rec.description, upper))
    if n_problems:
        raise DataError(_problem_report(path, problems, n_problems))
    if not records:
        raise DataError(f"{path} holds no FASTA records; each record needs a '>' header and a sequence")
    if check_nucleotide and residues >= NUCLEOTIDE_MIN_RESIDUES and nucleotide / residues > NUCLEOTIDE_FRACTION_LIMIT:
        raise DataError(f"{path} looks like DNA/RNA, not protein: {100 * nucleotide / residues:.1f}% of its "
                        f"{residues:,} residues are A/C/G/T/U/N. Translate it to protein first "
                        "(e.g. Bio.Seq.Seq(...).translate()) or pass a protein FASTA file.")
    return records


# -- writing ---------------------------------------------------------------------------------------
def write_fasta(records: Iterable[ProteinRecord | SeqRecord], path: str | os.PathLike[str]) -> Path:
    """Write records with `Bio.SeqIO` (60 residues a line), atomically; ``.gz`` targets are gzip."""
    seq_records = [r if isinstance(r, SeqRecord) else SeqRecord(Seq(r.sequence), id=r.id, description=r.description)
                   for r in records]
    text = io.StringIO()
    SeqIO.write(seq_records, text, "fasta")
    data = text.getvalue().encode("utf-8")
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)
    return path


_SAFE = "/:.,+-_@~()[]"


def format_metadata(metadata: dict[str, Any]) -> str:
    """``{'steps': 8, 'checkpoint': 'my run'}`` -> ``"steps=8 checkpoint=my%20run"`` (reversible)."""
    return " ".join(f"{quote(str(k), safe=_SAFE)}={quote(str(v), safe=_SAFE)}" for k, v in metadata.items())


def parse_metadata(description: str) -> dict[str, str]:
    """Inverse of `format_metadata` on a FASTA description (the id word is skipped); values are strings."""
    pairs = {}
    for word in description.split():
        if "=" in word:
            key, value = word.split("=", 1)
            pairs[unquote(key)] = unquote(value)
    return pairs
