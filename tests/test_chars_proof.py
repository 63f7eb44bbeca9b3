"""benchmarks/chars_proof.py cannot rot: teacher, student, matched-temperature and RGAS rows on toy models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from discdistill.errors import ConfigError
from tests.test_chars_domain import TINY_DISTILL, TINY_MODEL, _run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import chars_proof  # noqa: E402 - a script, imported from its folder


def cli(args, capsys):
    code, out, err = _run(args, capsys)
    assert code == 0, err
    return out


def test_rgas_spec_parsing():
    assert chars_proof.rgas_config("default") == chars_proof.RGASConfig()
    config = chars_proof.rgas_config("h_start=0,h_end=0,candidates=2")
    assert (config.h_start, config.h_end, config.candidates) == (0.0, 0.0, 2)
    with pytest.raises(ConfigError, match="candidates"):
        chars_proof.rgas_config("candidates=0")


@pytest.mark.parametrize("args, message", [
    (["--rows", "student"], "need --student"),
    (["--rows", "rgas", "--student", "run"], "at least one --rgas"),
    (["--rows", "teacher", "--rgas", "default"], "'rgas' in --rows"),
])
def test_rows_and_their_arguments_are_checked_before_any_work(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        chars_proof.main([*args, "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_teacher_student_and_rgas_rows_on_toy_models(tmp_path, capsys):
    teacher, run = tmp_path / "teacher", tmp_path / "run"
    cli(["pretrain", "--domain", "chars", "--data", "tiny", "--out", str(teacher), "--steps", "2", "--seq-len", "256",
         "--batch-size", "2", "--device", "cpu", "--quiet", "--set", "eval_every=2", "--set", "eval_batches=1",
         *TINY_MODEL], capsys)
    cli(["train", "--domain", "chars", "--teacher", str(teacher), "--data", "tiny", "--out", str(run),
         "--iterations", "1", "--quiet", *TINY_DISTILL], capsys)
    out = tmp_path / "proof.json"
    common = ["--teacher", str(teacher), "--student", str(run), "--seeds", "2", "--samples", "3", "--batch", "2",
              "--threads", "1", "--out", str(out)]
    chars_proof.main([*common, "--rows", "teacher", "student", "--teacher-steps", "4"])
    chars_proof.main([*common, "--rows", "rgas", "--rgas", "h_start=0,h_end=0", "--rgas", "default"])
    results = json.loads(out.read_text())
    rows = results["rows"]
    assert set(rows) == {"teacher@4", "student@8", "teacher@8 T-matched", "student@8 + RGAS (h_start=0,h_end=0)",
                         "student@8 + RGAS (default)"}  # the second call merged its rows into the first's file
    assert 0.7 <= results["matched_temperature"] <= 1.0
    for r in rows.values():
        assert r["seeds"] == 2 and r["samples_per_seed"] == 3 and 0.0 <= r["word_validity"] <= 1.0
    # 8 steps, re-ranking on the last 4 with M = 4: 16 forwards a draw; the default adds 4 tilts (forward + backward)
    assert rows["student@8 + RGAS (h_start=0,h_end=0)"]["disc_passes_per_draw"] == 16
    assert rows["student@8 + RGAS (default)"]["disc_passes_per_draw"] == 16 + 8
    assert rows["student@8 + RGAS (default)"]["rgas"] == chars_proof.RGASConfig().model_dump()
    table = capsys.readouterr().out
    assert "| student@8 + RGAS (default) | 8 |" in table
