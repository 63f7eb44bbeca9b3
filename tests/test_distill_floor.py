"""benchmarks/distill_floor.py cannot rot, and its floor counts the work the configuration asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distill_floor.py"


def run_floor(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / "floor.json"
    sets = [arg for item in overrides for arg in ("--set", item)]
    done = subprocess.run([sys.executable, str(SCRIPT), "--recipe", "markov", "--repeats", "2", "--threads", "1",
                           *sets, "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "ratio" in done.stdout
    return json.loads(out.read_text())["recipes"]["markov"]


def test_the_floor_counts_rollout_states_reward_views_and_disc_steps(tmp_path):
    # markov's tuned recipe: 8 rows x G 4 = 32 samples, reward read at 8 times x 1 corruption
    result = run_floor(tmp_path, "rollout_steps=3", "reward_corruptions=2", "disc_steps=2")
    pieces = result["pieces"]
    assert list(pieces) == ["student fwd+bwd (3 rollout states)", "teacher fwd (3 states, KL matching)",
                            "discriminator fwd+bwd (2 x 32 rows, x 2)", "discriminator fwd (16 x 32 reward views)",
                            "AdamW steps (student, discriminator) + EMA"]
    assert all(seconds > 0 for seconds in pieces.values())
    assert abs(result["floor_s"] - sum(pieces.values())) < 1e-12
    assert result["ratio"] == result["iteration_s"] / result["floor_s"]
    assert result["config"]["rollout_steps"] == 3 and result["config"]["reward_times"] == 8


def test_without_kl_matching_the_teacher_is_not_in_the_floor(tmp_path):
    pieces = run_floor(tmp_path, "kl_weight=0", "two_step=false")["pieces"]
    assert list(pieces)[:2] == ["student fwd+bwd (1 rollout state)", "discriminator fwd+bwd (2 x 32 rows)"]
