"""Rebuild the embedded protein subset shipped in discdistill_protein/data/.

Source: Debian package ``mmseqs2-examples`` (MMseqs2 example data), file
/usr/share/doc/mmseqs2/example-data/DB.fasta.gz: 20,000 UniProtKB records (UniProt Consortium,
CC BY 4.0). Install it with::

    apt-get update && apt-get install -y --no-install-recommends mmseqs2-examples

Procedure (deterministic): parse every record with Bio.SeqIO, keep the first occurrence of each
distinct sequence (case-insensitive), keep only sequences the tokenizer accepts in strict mode,
draw ``--count`` of them uniformly without replacement with numpy's PCG64 seeded by ``--seed``,
restore their original file order, and write them (headers untouched) as gzip with mtime 0 so the
output bytes depend only on the input.

    python plugins/protein/scripts/make_embedded_subset.py [--count 4000] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np
from Bio import SeqIO
from discdistill_protein.tokenizer import ProteinTokenizer

from discdistill.errors import DataError

SOURCE = Path("/usr/share/doc/mmseqs2/example-data/DB.fasta.gz")
TARGET = Path(__file__).resolve().parents[1] / "discdistill_protein" / "data" / "uniprot_subset.fasta.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=TARGET)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = ProteinTokenizer()
    seen: set[str] = set()
    kept = []
    with gzip.open(args.source, "rt") as handle:
        for record in SeqIO.parse(handle, "fasta"):
            try:
                seq = tokenizer.normalize(str(record.seq), record_id=record.id)
            except DataError:
                continue
            if not seq or seq in seen:
                continue
            seen.add(seq)
            kept.append(record)
    rng = np.random.Generator(np.random.PCG64(args.seed))
    chosen = np.sort(rng.choice(len(kept), size=args.count, replace=False))
    text = io.StringIO()
    SeqIO.write([kept[i] for i in chosen], text, "fasta")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                     compresslevel=9) as gz:
        gz.write(text.getvalue().encode("ascii"))
    print(f"{len(kept)} distinct valid records in {args.source}; wrote {args.count} to {args.out} "
          f"({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
