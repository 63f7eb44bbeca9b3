"""benchmarks/distill_synthetic.py cannot rot: a run at toy budgets writes every row its docstring promises."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import distill_synthetic  # noqa: E402 - a script, imported from its folder


@pytest.fixture
def toy_budgets(monkeypatch):
    """--quick, smaller still: 40 teacher steps and 6 distillation iterations (checks the script, not the method)."""
    monkeypatch.setattr(distill_synthetic, "QUICK_TEACHER", dict(steps=40, warmup_steps=4, eval_every=40, save_every=40))
    monkeypatch.setattr(distill_synthetic, "QUICK_STUDENT", dict(iterations=6, warmup_steps=2))


def test_a_quick_run_reports_teacher_student_matched_rgas_and_cost_rows(tmp_path, toy_budgets, capsys):
    assert distill_synthetic.main(["--out", str(tmp_path), "--quick", "--skip-ablation", "--variants", "tuned",
                                   "--threads", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(row["group"], row["name"].strip()): row for row in results["rows"]}

    assert results["samples_per_row"] == 64 and results["seq_len"] == 32
    # the validation rows are the chain's own samples: their exact NLL is near its expectation (64 x 31 transitions)
    assert abs(rows[("data", "validation rows")]["nll"] - results["expected_data_nll"]) < 0.2
    assert {name for group, name in rows if group == "teacher"} == {f"{s} steps" for s in (2, 4, 8, 64, 256)}
    assert results["distill_config"]["iterations"] == 6
    assert results["tuned_overrides"] == json.loads(json.dumps(distill_synthetic.TUNED))
    tuned = {name for group, name in rows if group == "tuned"}
    for steps in (2, 4, 8):
        assert f"{steps} steps" in tuned
        matched = rows[("tuned", next(n for n in tuned if n.startswith(f"teacher {steps} steps, T = ")))]
        assert 0.3 <= matched["temperature"] <= 1.0  # the bisection's bracket
        for score in ("all", "masked"):
            rgas = next(n for n in tuned if n.startswith(f"{steps} steps + RGAS (score={score}"))
            assert rows[("tuned", rgas)]["disc_passes"] > 0 and f"+{rows[('tuned', rgas)]['disc_passes']} D" in rgas
    assert all(0.0 < row["entropy"] <= math.log(16) + 1e-9 for row in results["rows"])  # nats, 16 symbols
    assert "student" not in results["distill_seconds"] and results["distill_seconds"]["tuned"] > 0
    for cost in results["iteration_cost"].values():
        assert cost["ratio"] == cost["iteration_s"] / cost["floor_s"] and cost["repeats"] == 3
    assert "results:" in capsys.readouterr().out
