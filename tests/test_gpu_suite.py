"""benchmarks/gpu_suite.py cannot rot: its --dry-run (CPU, tiny sizes) runs every measurement it makes on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def test_the_gpu_suite_dry_run_measures_everything_it_reports(tmp_path):
    out = tmp_path / "suite.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--peak-tflops", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for batch in ("batch1", "batch4"):
        sampling = result["sampling"][batch]
        assert sampling["student_tokens_per_s"] > 0 and sampling["speedup_vs_teacher"] > 1
        assert 0 < sampling["student_tokens_per_s"] <= sampling["student_tokens_per_s_floor"]  # the floor bounds it
    assert result["rgas"]["ratio"] > 1 and result["rgas"]["flop_ratio"] > 1
    assert result["distillation"]["seconds_per_iteration"] > result["distillation"]["floor_seconds"] > 0
    assert all(row["flops"] > 0 and row["seconds"] >= row["floor_seconds"] for row in result["rows"])
    assert result["protocol"]["dry_run"] and result["protocol"]["peak_flops"] == 1e12
    assert "RGAS" in done.stdout and "s/iteration" in done.stdout
