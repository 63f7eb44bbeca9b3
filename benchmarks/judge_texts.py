"""Score the samples `chars_proof.py --texts DIR` kept with a judge, without drawing them again.

    python benchmarks/judge_texts.py --texts runs/texts --judge smollm2 --out benchmarks/results/chars-judge.json

Each DIR/<row>.jsonl holds {"seed", "text"} lines; per row it prints and stores the judge's NLL per
character and per token (mean +- sd over seeds, pooled value and standard error) and its perplexity,
as `chars_proof.judge_metrics` defines them. Rows are merged into an existing --out file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chars_proof import judge_metrics  # noqa: E402 - the proof's judge protocol, shared

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
    parser.add_argument("--judge", default="smollm2")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    judge = load_judge(args.judge, torch.device("cpu"), progress=False)
    if judge is None:
        parser.error("--judge none scores nothing")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": {}}
    results["judge"] = args.judge
    for directory in args.texts:
        for name, texts_by_seed in read_rows(directory).items():
            m = judge_metrics(judge, texts_by_seed)
            results["rows"][f"{directory.name}/{name}"] = {"samples": sum(map(len, texts_by_seed)), **m}
            print(f"{directory.name + '/' + name:<40} NLL/char {m['judge_nll_per_char_pooled']:.4f} +- "
                  f"{m['judge_nll_per_char_se_pooled']:.4f} (seed sd {m['judge_nll_per_char_sd']:.4f})  "
                  f"NLL/token {m['judge_nll_pooled']:.4f}  PPL {m['judge_ppl']:.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
