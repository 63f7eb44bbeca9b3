"""Operations: two processes equal one, real SIGKILL / SIGTERM with resume, corrupt checkpoints,
non-finite losses, and the one-line errors a user meets (docs/operations.md)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from discdistill import training
from discdistill.checkpoint import load_pretrained
from discdistill.distributed import DistContext
from discdistill.errors import ConfigError
from discdistill.storage import kept_checkpoints
from tests.test_cli import run

FAST = ["--batch-size", "8", "--device", "cpu", "--quiet", "--set", "log_every=1", "--set", "warmup_steps=2"]


def subprocess_env(site: Path) -> dict[str, str]:
    """The toy plugin's site directory on the path; one thread per process (2-core CI, exact numbers)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def cli_process(args: list[str], site: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "discdistill", *args], env=subprocess_env(site),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_parameters(a: Path, b: Path, atol: float = 0.0) -> None:
    for (name, pa), pb in zip(load_pretrained(a).state_dict().items(), load_pretrained(b).state_dict().values()):
        assert torch.allclose(pa, pb, rtol=0, atol=atol), name


def assert_same_state(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    sa, sb = load_file(str(a / "tensors.safetensors")), load_file(str(b / "tensors.safetensors"))
    assert sorted(sa) == sorted(sb)
    for key in sa:
        if not key.startswith("rng/") and sa[key].is_floating_point():
            assert torch.allclose(sa[key], sb[key], rtol=1e-3, atol=1e-5), (key, (sa[key] - sb[key]).abs().max())


# ----------------------------------------------------------------------------------------- scale-out

def test_two_processes_and_accumulation_match_one_process(toy_plugin, tmp_path, capsys):
    """Global batch 8: one process; one process with grad_accum=2; two gloo ranks with DDP and with FSDP
    (launched through --nproc, i.e. torchrun): the same losses and parameters up to float rounding."""
    args = ["pretrain", "--domain", "counting", "--steps", "4", *FAST, "--set", "eval_every=4", "--set", "save_every=2"]
    assert run([*args, "--out", str(tmp_path / "one")], capsys)[0] == 0
    assert run([*args, "--out", str(tmp_path / "accum"), "--set", "grad_accum=2"], capsys)[0] == 0
    for mode in ("ddp", "fsdp"):
        two = subprocess.run([sys.executable, "-m", "discdistill", "--nproc", "2", *args, "--out", str(tmp_path / mode),
                              "--set", f"parallel={mode}"], env=subprocess_env(toy_plugin), capture_output=True,
                             text=True, timeout=180)
        assert two.returncode == 0, two.stderr
        assert two.stdout.count("teacher saved to") == 1  # rank 0 speaks for the run
    reference = metrics(tmp_path / "one")
    for other in ("accum", "ddp", "fsdp"):
        records = metrics(tmp_path / other)
        assert [r["step"] for r in records] == [1, 2, 3, 4]
        for a, b in zip(reference, records):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert reference[-1]["val_nll"] == pytest.approx(records[-1]["val_nll"], rel=1e-5)
        assert_same_parameters(tmp_path / "one" / "model", tmp_path / other / "model", atol=1e-5)
        assert_same_state(tmp_path / "one" / "checkpoint.1", tmp_path / other / "checkpoint.1")  # weights, AdamW


def test_shards_are_disjoint_and_cover_the_batch():
    rows = [list(range(12))[DistContext(rank=r, world_size=2).shard(12, 3, a)] for a in range(3) for r in range(2)]
    assert sorted(sum(rows, [])) == list(range(12)) and all(len(r) == 2 for r in rows)
    with pytest.raises(ConfigError, match="a global batch of 3 rows cannot be split evenly over 2 ranks"):
        DistContext(rank=0, world_size=2).shard(3)


# ----------------------------------------------------------------------------------------- crash safety

KILL_ARGS = ["pretrain", "--domain", "counting", "--steps", "40", *FAST, "--set", "eval_every=1000",
             "--set", "save_every=4"]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"finished before {path} appeared: {process.communicate()[1]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_sigkill_then_resume_matches_an_uninterrupted_run(toy_plugin, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = cli_process([*KILL_ARGS, "--out", str(straight)], toy_plugin)
    victim = cli_process([*KILL_ARGS, "--out", str(killed)], toy_plugin)
    wait_for(killed / "checkpoint.1", victim)  # at least two checkpoints written, the run still going
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL and not (killed / "model").exists()
    resumed = cli_process([*KILL_ARGS, "--out", str(killed), "--resume"], toy_plugin)
    assert resumed.wait(timeout=120) == 0, resumed.communicate()[1]
    assert reference.wait(timeout=120) == 0, reference.communicate()[1]
    a, b = metrics(straight), metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 41))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # exact, step for step
    assert_same_parameters(straight / "model", killed / "model")
    assert [p.name for p in kept_checkpoints(killed / "checkpoint")] == ["checkpoint", "checkpoint.1"]
    assert not list(killed.glob(".*.tmp"))  # temp directories of the killed write were cleaned up


def test_sigterm_saves_a_checkpoint_before_exiting(toy_plugin, tmp_path):
    out = tmp_path / "run"
    process = cli_process([*KILL_ARGS, "--out", str(out)], toy_plugin)
    wait_for(out / "checkpoint", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in err
    step = json.loads((out / "checkpoint" / "state.json").read_text())["meta"]["step"]
    assert f"interrupted at step {step}: checkpoint saved" in err and "--resume" in err


def test_a_corrupt_checkpoint_falls_back_to_the_previous_good_one(toy_plugin, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--domain", "counting", "--steps", "6", *FAST, "--set", "eval_every=6", "--set", "save_every=2",
            "--set", "keep_checkpoints=3", "--out", str(out)]
    assert run(args, capsys)[0] == 0
    (out / "model").rename(tmp_path / "reference")
    kept = kept_checkpoints(out / "checkpoint")
    assert [json.loads((p / "state.json").read_text())["meta"]["step"] for p in kept] == [6, 4, 2]
    (kept[0] / "state.json").write_text('{"format_version": 1, "meta": {')  # bad JSON
    tensors = kept[1] / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])  # cut in half
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    assert "checkpoint/state.json is corrupt" in err and "checkpoint.1 is corrupt: tensors.safetensors" in err
    assert f"resuming from the previous good checkpoint {kept[2]}" in err
    assert_same_parameters(tmp_path / "reference", out / "model")  # steps 3-6 redone exactly
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(toy_plugin, tmp_path, capsys, monkeypatch):
    import discdistill.checkpoint as checkpoint

    out = tmp_path / "run"
    real_save, calls = checkpoint.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    code, _, err = run(["pretrain", "--domain", "counting", "--steps", "6", *FAST, "--set", "save_every=2",
                        "--out", str(out)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "error: disk full while writing" in err and "the previous checkpoint is intact" in err
    assert json.loads((out / "checkpoint" / "state.json").read_text())["meta"]["step"] == 2
    assert not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------- numerical faults

def nan_on_calls(monkeypatch, bad_calls):
    """Make ElboObjective.forward return NaN on the given (1-based) training calls."""
    real, calls = training.ElboObjective.forward, []

    def forward(self, x, t, u):
        loss = real(self, x, t, u)
        if self.training:
            calls.append(1)
            if len(calls) in bad_calls:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(training.ElboObjective, "forward", forward)


def test_a_non_finite_loss_is_skipped_and_counted(toy_plugin, tmp_path, capsys, monkeypatch):
    nan_on_calls(monkeypatch, {3, 4})
    out = tmp_path / "run"
    code, _, err = run(["pretrain", "--domain", "counting", "--steps", "6", *FAST, "--set", "eval_every=6",
                        "--out", str(out)], capsys)
    assert code == 0, err
    records = metrics(out)
    assert [r["nonfinite_skipped"] for r in records] == [0, 0, 1, 2, 2, 2]
    assert all(torch.isfinite(p).all() for p in load_pretrained(out / "model").parameters())


def test_persistent_non_finite_losses_stop_the_run(toy_plugin, tmp_path, capsys, monkeypatch):
    nan_on_calls(monkeypatch, set(range(3, 100)))
    out = tmp_path / "run"
    code, _, err = run(["pretrain", "--domain", "counting", "--steps", "20", *FAST, "--set", "save_every=2",
                        "--set", "max_nonfinite=3", "--out", str(out)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "the loss was non-finite for 4 consecutive steps (up to step 6)" in err
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["meta"]["step"] == 4 and not (out / "model").exists()


# ----------------------------------------------------------------------------------------- bad input

def save_model(path: Path, vocab: int, seq_len: int) -> Path:
    from discdistill.checkpoint import save_pretrained
    from discdistill.config import model_config_from_preset
    from discdistill.models import DiT

    return save_pretrained(DiT(model_config_from_preset("tiny", vocab_size=vocab, mask_id=vocab - 1,
                                                        seq_len=seq_len, hidden_size=16, cond_dim=8)), path)


def test_bad_input_gives_one_line_and_a_non_zero_exit(toy_plugin, tmp_path, capsys, monkeypatch):
    wrong_vocab, short = save_model(tmp_path / "v30", 30, 8), save_model(tmp_path / "short", 9, 4)
    not_utf8 = tmp_path / "c.toml"
    not_utf8.write_bytes(b"\xff\xfe\x00lr = 1")
    blocker = tmp_path / "file"
    blocker.write_text("")
    newer = save_model(tmp_path / "newer", 9, 8)
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    train = ["train", "--domain", "counting", "--iterations", "1", "--device", "cpu", "--quiet", "--out",
             str(tmp_path / "s")]
    cases = [
        (["pretrain", "--domain", "nope"], "unknown domain 'nope'"),
        ([*train, "--teacher", str(wrong_vocab)], "the model has vocabulary 30 (mask id 29) but domain 'counting' has 9"),
        (["sample", "--domain", "counting", "--checkpoint", str(short), "--seq-len", "8"],
         "sequence length 8 exceeds the model's seq_len 4"),
        ([*train, "--teacher", str(newer)], "format version 99; this discdistill reads up to 1. Upgrade"),
        (["pretrain", "--domain", "counting", "--set", "grad_accum=3"], "batch_size (32) must be divisible by grad_accum"),
        (["pretrain", "--domain", "counting", "--set", "keep_checkpoints=0"], "keep_checkpoints: Input should be greater"),
        (["pretrain", "--domain", "counting", "--config", str(tmp_path / "missing.toml")], "config file"),
        (["pretrain", "--domain", "counting", "--config", str(not_utf8)], "cannot read config file"),
        (["pretrain", "--domain", "counting", "--steps", "1", "--out", str(blocker / "run")], "cannot write"),
        (["pretrain", "--domain", "counting", "--out", str(tmp_path / "r"), "--resume"], "no checkpoint in"),
    ]
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        assert code == 1, (argv, err)
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)

    import toy_counting

    monkeypatch.setattr(toy_counting.CountingDomain, "dataset", lambda self, split, seq_len, source=None:
                        torch.zeros(0, seq_len, dtype=torch.long))
    code, _, err = run(["pretrain", "--domain", "counting", "--out", str(tmp_path / "e")], capsys)
    assert code == 1 and "the training set is empty" in err and len(err.strip().splitlines()) == 1


def test_no_user_file_is_unpickled():
    """torch.load only in the MDLM importer, with weights_only=True (a malicious pickle is refused:
    tests/test_mdlm_import.py::test_raw_pickle_refused_and_not_executed)."""
    root = Path(__file__).resolve().parents[1]
    sources = [p for p in (root / "discdistill").rglob("*.py")] + list((root / "plugins").glob("*/discdistill_*/*.py"))
    for path in sources:
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line and not line.lstrip().startswith(("#", "``", "(")):
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


# ----------------------------------------------------------------------------------------- distillation

def tiny_teacher():
    from discdistill.config import model_config_from_preset
    from discdistill.models import DiT

    torch.manual_seed(0)
    return DiT(model_config_from_preset("tiny", vocab_size=9, mask_id=8, seq_len=8, hidden_size=32, cond_dim=16))


def test_distillation_skips_non_finite_losses_and_stops_when_they_persist(tmp_path, monkeypatch):
    from discdistill.distill import trainer as distill_trainer
    from discdistill.distill.config import DistillConfig
    from discdistill.errors import NumericalError

    real, calls = distill_trainer.student_policy_loss, []

    def policy_loss(*args):
        calls.append(1)
        return real(*args) * (float("nan") if len(calls) in bad else 1.0)

    monkeypatch.setattr(distill_trainer, "student_policy_loss", policy_loss)
    config = DistillConfig(iterations=4, batch_rows=2, group_size=2, device="cpu", warmup_steps=0, max_nonfinite=2)
    data = torch.randint(0, 8, (16, 8))
    bad = {2}
    distill_trainer.distill(config, tiny_teacher(), data, tmp_path / "once", progress=False)
    assert [r["nonfinite_skipped"] for r in metrics(tmp_path / "once")] == [0, 1, 1, 1]
    assert all(torch.isfinite(p).all() for p in load_pretrained(tmp_path / "once" / "student").parameters())
    calls.clear()
    bad = set(range(2, 100))
    with pytest.raises(NumericalError, match="non-finite for 3 consecutive steps \\(up to step 4\\)"):
        distill_trainer.distill(config, tiny_teacher(), data, tmp_path / "always", progress=False)


def test_distillation_runs_on_two_processes(toy_plugin, tmp_path, capsys):
    """DDP-style distillation under torchrun: each rank takes whole rows (whole groups); rank 0 writes."""
    teacher = tmp_path / "teacher"
    assert run(["pretrain", "--domain", "counting", "--steps", "2", *FAST, "--out", str(teacher)], capsys)[0] == 0
    out = tmp_path / "student"
    args = ["--nproc", "2", "train", "--domain", "counting", "--teacher", str(teacher), "--out", str(out),
            "--iterations", "2", "--batch-rows", "2", "--device", "cpu", "--quiet", "--set", "warmup_steps=0"]
    done = subprocess.run([sys.executable, "-m", "discdistill", *args], env=subprocess_env(toy_plugin),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("student saved to") == 1
    assert [r["step"] for r in metrics(out)] == [1, 2]
    state = json.loads((out / "state" / "state.json").read_text())["meta"]
    assert len(state["generators"]) == 2 and state["generators"][0] != state["generators"][1]
