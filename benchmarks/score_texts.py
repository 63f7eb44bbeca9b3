"""Score the samples `chars_proof.py --texts DIR` kept, without drawing them again.

    python benchmarks/score_texts.py --texts runs/texts --judge smollm2 --out benchmarks/results/chars-scores.json

Each DIR/<row>.jsonl holds {"seed", "text"} lines. Per row (file) it computes what chars_proof.py
computes for a row from the same texts (word validity, character entropy, distinct-n, word length:
`chars_proof.text_metrics`) and, with ``--judge``, the judge's NLL per character and per token (mean
+- sd over seeds, pooled value and standard error) and its perplexity (`chars_proof.judge_metrics`).
``--only STEM ...`` scores some files of the folders. Rows are merged into an existing --out file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chars_proof import judge_metrics, summary_line, text_metrics  # noqa: E402 - the proof's protocol, shared

from discdistill.evaluation.judges import load_judge  # noqa: E402


def read_rows(directory: Path) -> dict[str, list[list[str]]]:
    """{row file stem: texts grouped by seed, in seed order}."""
    rows = {}
    for path in sorted(directory.glob("*.jsonl")):
        by_seed: dict[int, list[str]] = defaultdict(list)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            by_seed[int(record["seed"])].append(record["text"])
        rows[path.stem] = [by_seed[seed] for seed in sorted(by_seed)]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=Path, required=True, action="append", help="a chars_proof --texts folder")
    parser.add_argument("--judge", default="none", help="'smollm2', another judge spec, or none (text metrics only)")
    parser.add_argument("--only", nargs="+", default=None, help="file stems to score (default: every jsonl)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    judge = load_judge(args.judge, torch.device("cpu"), progress=False)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": {}}
    results["judge"] = args.judge
    for directory in args.texts:
        for name, texts_by_seed in read_rows(directory).items():
            if args.only is not None and name not in args.only:
                continue
            key = f"{directory.name}/{name}"
            m = {"samples": sum(map(len, texts_by_seed)), "seeds": len(texts_by_seed), **text_metrics(texts_by_seed)}
            if judge is not None:
                m.update(judge_metrics(judge, texts_by_seed))
            results["rows"][key] = m
            print(summary_line(key, m), flush=True)
            if judge is not None:
                print(f"{'':<28} judge NLL/char {m['judge_nll_per_char_pooled']:.4f} +- "
                      f"{m['judge_nll_per_char_se_pooled']:.4f} (seed sd {m['judge_nll_per_char_sd']:.4f}), "
                      f"NLL/token {m['judge_nll_pooled']:.4f}, PPL {m['judge_ppl']:.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
