"""The sampler of this checkout against the one at an earlier commit, side by side in one process.

    python benchmarks/compare_sampler.py --before 06015cb --steps 1024 --batch 1 32 --out benchmarks/results/compare-sampler.json

Loads ``discdistill/sampling.py`` as it was at ``--before`` (``git show``) next to the current module,
and times ``sample`` from each on the same random-weight DiT (``--preset``, ``--seq-len``), with and
without the per-row cache, alternating before / after. Also checks both give the same ids for a seed
(a sampler change that is meant to be exact must pass this) and reports NFE and rows pushed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from discdistill import sampling as current
from speed import V, build_dit  # benchmarks/ is the script's directory, so on sys.path


def sampler_at(commit: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{commit}:discdistill/sampling.py"], check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sampling_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sampling_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="commit whose sampling.py is the baseline")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare-sampler.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = sampler_at(args.before)
    dit = build_dit(args.preset, args.seq_len, torch.device("cpu"))
    rows = []
    print(f"{'batch':>5} {'cache':>6} {'sampler':>8} {'seconds':>9} {'NFE':>5} {'rows':>6}  same ids")
    with torch.no_grad():
        for batch in args.batch:
            for cache in (False, True):
                ids = {}
                for name, module in (("before", before), ("after", current)):
                    tic = time.perf_counter()
                    out = module.sample(dit, num_samples=batch, seq_len=args.seq_len, steps=args.steps, mask_id=V - 1,
                                        cache=cache, generator=torch.Generator().manual_seed(0))
                    seconds = time.perf_counter() - tic
                    ids[name] = out.ids
                    same = "" if name == "before" else str(torch.equal(ids["before"], out.ids))
                    rows.append({"batch": batch, "cache": cache, "sampler": name, "seconds": seconds, "nfe": out.nfe,
                                 "denoised_rows": out.denoised_rows, "same_ids": same or None})
                    print(f"{batch:>5} {cache!s:>6} {name:>8} {seconds:>9.2f} {out.nfe:>5} {out.denoised_rows:>6}  {same}",
                          flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "torch": torch.__version__,
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
