"""Nothing a user made is overwritten or lost: existing runs, --overwrite, one writer per run directory,
sha256-verified checkpoints, disk full, and every command's malformed input (docs/operations.md)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from discdistill.checkpoint import load_pretrained, save_pretrained
from discdistill.errors import CorruptCheckpointError, RunInUseError
from discdistill.rundir import RunDirectory, RunLock
from tests.conftest import run_cli as run
from tests.conftest import small_dit

FAST = ["--batch-size", "8", "--device", "cpu", "--quiet", "--set", "log_every=1", "--set", "warmup_steps=2",
        "--set", "eval_every=100"]


def pretrain_args(out: Path, steps: int = 2, *extra: str) -> list[str]:
    return ["pretrain", "--domain", "counting", "--out", str(out), "--steps", str(steps), *FAST, *extra]


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> hex): byte identity of a whole run."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(code: int, err: str) -> str:
    assert code != 0, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------- existing runs

def test_a_repeated_pretrain_is_refused_and_the_first_teacher_is_byte_identical(toy_plugin, tmp_path, capsys):
    out = tmp_path / "t"
    assert run(pretrain_args(out), capsys)[0] == 0
    before = digest_tree(out)
    err = one_line_error(*run(pretrain_args(out), capsys)[::2])
    assert f"{out} already holds a run (checkpoint, metrics.jsonl, model); pass --resume" in err and "--overwrite" in err
    assert digest_tree(out) == before


def test_resume_and_overwrite_together_are_refused(toy_plugin, tmp_path, capsys):
    err = one_line_error(*run([*pretrain_args(tmp_path / "t"), "--resume", "--overwrite"], capsys)[::2])
    assert "--resume continues a run and --overwrite replaces it: give one of them" in err


def test_overwrite_deletes_the_old_run_only_after_the_new_first_checkpoint(toy_plugin, tmp_path, capsys, monkeypatch):
    import discdistill.training as training

    out = tmp_path / "t"
    assert run(pretrain_args(out, 4, "--set", "save_every=2"), capsys)[0] == 0
    old_model = digest_tree(out / "model")
    real, seen = training.save_training_state, []

    def save_training_state(directory, **kwargs):
        seen.append((out / ".replaced" / "model").is_dir())  # the old run, still on disk, set aside
        return real(directory, **kwargs)

    monkeypatch.setattr(training, "save_training_state", save_training_state)
    code, _, err = run([*pretrain_args(out, 4, "--set", "save_every=2", "--seed", "7"), "--overwrite"], capsys)
    assert code == 0, err
    assert seen == [True, False]  # step 2, step 4: set aside until the first checkpoint was written, then gone
    assert not (out / ".replaced").exists() and digest_tree(out / "model") != old_model
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_an_overwrite_that_fails_before_its_first_checkpoint_restores_the_old_run(toy_plugin, tmp_path, capsys,
                                                                                    monkeypatch):
    import discdistill.training as training

    out = tmp_path / "t"
    assert run(pretrain_args(out), capsys)[0] == 0
    before = digest_tree(out)

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training, "save_training_state", fail)
    code, _, err = run([*pretrain_args(out, 3, "--seed", "7"), "--overwrite"], capsys)
    assert code == 1 and "the previous run in" in err and "is restored" in err
    assert digest_tree(out) == before and not (out / ".replaced").exists()


def test_an_overwrite_killed_before_its_first_checkpoint_is_undone_by_the_next_command(toy_plugin, tmp_path, capsys):
    out = tmp_path / "t"
    assert run(pretrain_args(out), capsys)[0] == 0
    before = digest_tree(out)
    claim = RunDirectory(out, ("model", "checkpoint", "metrics.jsonl"), overwrite=True).__enter__()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # the new run had started logging
    claim._lock.release()  # SIGKILL: the kernel drops the flock, nothing else runs
    assert not (out / "model").exists() and (out / ".replaced" / "model").is_dir()
    code, _, err = run(pretrain_args(out), capsys)  # the same command again, without flags
    assert code == 1 and "already holds a run" in err
    assert "an --overwrite of" in err and "the previous run is restored" in err
    assert digest_tree(out) == before


def test_a_repeated_train_is_refused_before_any_work(toy_plugin, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert run(pretrain_args(teacher), capsys)[0] == 0
    args = ["train", "--domain", "counting", "--teacher", str(teacher), "--out", str(tmp_path / "s"), "--iterations",
            "1", "--batch-rows", "1", "--device", "cpu", "--quiet", "--set", "warmup_steps=0"]
    assert run(args, capsys)[0] == 0
    before = digest_tree(tmp_path / "s")
    err = one_line_error(*run(args, capsys)[::2])
    assert "already holds a run (discriminator, metrics.jsonl, state, student); pass --resume" in err
    assert digest_tree(tmp_path / "s") == before
    code, _, err = run([*args, "--overwrite", "--seed", "3"], capsys)
    assert code == 0, err
    assert digest_tree(tmp_path / "s")["student/model.safetensors"] != before["student/model.safetensors"]


# ------------------------------------------------------------------------------------- one writer

def test_a_second_process_on_the_same_out_is_refused(toy_plugin, tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{{os.getpid()}}\\n".encode())
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = one_line_error(*run(pretrain_args(out), capsys)[::2])
        assert f"{out} is in use by another discdistill process (pid {holder.pid}); wait for it" in err
        assert not (out / "model").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_process_is_taken_over(toy_plugin, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "t"
    out.mkdir()
    (out / ".lock").write_text(f"{dead.pid}\n")
    code, _, err = run(pretrain_args(out), capsys)
    assert code == 0, err
    assert f"taking over the lock of {out} left by process {dead.pid}, which is no longer running" in err
    assert not (out / ".lock").exists() and (out / "model" / "model.safetensors").is_file()


def test_the_lock_is_exclusive_within_a_process_and_released(tmp_path):
    first = RunLock(tmp_path / "r")
    first.acquire()
    assert (tmp_path / "r" / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunInUseError, match="is in use by another discdistill process"):
        RunLock(tmp_path / "r").acquire()
    first.release()
    assert not (tmp_path / "r").exists()  # it made the directory and nothing was written: gone again
    second = RunLock(tmp_path / "r")
    second.acquire()
    second.release()


# ------------------------------------------------------------------------------------- verified files

def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] = (data[len(data) // 2] + 1) % 256  # same size: only a hash can tell; twice still damages
    path.write_bytes(bytes(data))


def test_checkpoints_record_and_check_a_sha256(tmp_path):
    directory = save_pretrained(small_dit(9, 8, 8), tmp_path / "m")
    record = json.loads((directory / "config.json").read_text())["files"]["model.safetensors"]
    assert record == {"bytes": (directory / "model.safetensors").stat().st_size,
                      "sha256": hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()}
    flip_a_byte(directory / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match="model.safetensors does not match its sha256"):
        load_pretrained(directory)


def test_a_model_written_before_sha256_records_still_loads(tmp_path):
    model = small_dit(9, 8, 8)
    directory = save_pretrained(model, tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["files"] = {"model.safetensors": config["files"]["model.safetensors"]["bytes"]}  # format of 2026-11
    (directory / "config.json").write_text(json.dumps(config))
    assert load_pretrained(directory).config == model.config


def test_a_damaged_latest_state_falls_back_and_none_valid_fails_clearly(toy_plugin, tmp_path, capsys):
    out = tmp_path / "t"
    args = pretrain_args(out, 4, "--set", "save_every=2", "--set", "keep_checkpoints=2")
    assert run(args, capsys)[0] == 0
    flip_a_byte(out / "checkpoint" / "tensors.safetensors")
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    assert "tensors.safetensors does not match its sha256" in err and "resuming from the previous good" in err
    for kept in ("checkpoint", "checkpoint.1"):
        flip_a_byte(out / kept / "tensors.safetensors")
    err = one_line_error(*run([*args, "--resume"], capsys)[::2])
    assert "no intact checkpoint to resume from" in err and "start again without --resume" in err


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / "model.safetensors").unlink(), "is incomplete: model.safetensors is missing; restore it"),
    (lambda m: flip_a_byte(m / "model.safetensors"), "model.safetensors does not match its sha256"),
    (lambda m: (m / "config.json").write_text("{"), "config.json is corrupt"),
    (lambda m: (m / "config.json").unlink(), "holds no model"),
])
def test_sample_and_eval_on_a_damaged_model_give_one_line(toy_plugin, tmp_path, capsys, damage, message):
    out = tmp_path / "t"
    assert run(pretrain_args(out), capsys)[0] == 0
    damage(out / "model")
    for argv in (["sample", "--domain", "counting", "--checkpoint", str(out), "--num-samples", "2", "--steps", "2"],
                 ["eval", "--domain", "counting", "--checkpoint", str(out), "--num-samples", "2", "--steps", "2",
                  "--judge", "none", "--quiet"]):
        err = one_line_error(*run(argv, capsys)[::2])
        assert message in err, (argv, err)
    assert not list(out.glob("samples-*")) and not (out / "eval-ancestral").exists()


def test_disk_full_then_resume_continues_from_the_last_good_state(toy_plugin, tmp_path, capsys, monkeypatch):
    import discdistill.checkpoint as checkpoint

    straight = tmp_path / "straight"
    assert run(pretrain_args(straight, 6, "--set", "save_every=2"), capsys)[0] == 0
    out, real, calls = tmp_path / "t", checkpoint.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    err = one_line_error(*run(pretrain_args(out, 6, "--set", "save_every=2"), capsys)[::2])
    assert "disk full while writing" in err and "is intact" in err
    code, _, err = run([*pretrain_args(out, 6, "--set", "save_every=2"), "--resume"], capsys)
    assert code == 0, err
    assert digest_tree(out / "model")["model.safetensors"] == digest_tree(straight / "model")["model.safetensors"]


# ------------------------------------------------------------------------------------- malformed input

def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "empty": _write(tmp_path / "empty.txt", b""),
        "binary": _write(tmp_path / "binary.txt", bytes(range(256)) * 8),
        "letter_free": _write(tmp_path / "symbols.txt", "!!! ??? ... --- ### \n" * 50),
        "huge_toml": _write(tmp_path / "huge.toml", "lr = 1e-3\n" * 120_000),
        "bad_fasta": _write(tmp_path / "bad.fasta", ">a\nMKV1\n>b\n\n"),
        "headerless_fasta": _write(tmp_path / "plain.fasta", "MKVLA\n"),
        "empty_samples": _write(tmp_path / "samples.jsonl", b""),
        "binary_samples": _write(tmp_path / "samples.txt", b"\xff\xfe\x00\x81" * 64),
        "bad_safetensors": _write(tmp_path / "w.safetensors", b"\x00" * 16),
        "blocker": _write(tmp_path / "a-file", b""),
        "no_model": tmp_path / "empty-dir",
    }


#: (case id, argv with {placeholders} for bad_files and OUT, message). Every case: exit 1 or 2, one line
#: on stderr, no traceback, and nothing at OUT afterwards. The same table is in docs/operations.md.
MALFORMED = [
    ("data: empty file", "pretrain --domain chars --data {empty} --out {OUT}", "the file is empty"),
    ("data: binary file", "pretrain --domain chars --data {binary} --out {OUT}", "looks binary"),
    ("data: letter-free text", "pretrain --domain chars --data {letter_free} --out {OUT}", "no letters"),
    ("data: FASTA with bad records", "pretrain --domain protein --data {bad_fasta} --out {OUT}",
     "2 problems found; nothing was loaded"),
    ("data: not FASTA", "pretrain --domain protein --data {headerless_fasta} --out {OUT}", "is not FASTA"),
    ("config: oversized file", "pretrain --domain counting --config {huge_toml} --out {OUT}", "a config file is at most"),
    ("--set: unknown key", "pretrain --domain counting --set not_a_field=1 --out {OUT}", "Extra inputs are not permitted"),
    ("--set: wrong type", "pretrain --domain counting --set lr=fast --out {OUT}", "lr: Input should be a valid number"),
    ("--set: NaN", "pretrain --domain counting --set lr=nan --out {OUT}", "lr: Input should be a finite number"),
    ("--set: infinity", "train --domain counting --set student_lr=inf --out {OUT}",
     "student_lr: Input should be a finite number"),
    ("--set: negative", "pretrain --domain counting --set lr=-1 --out {OUT}", "lr: Input should be greater than 0"),
    ("zero steps", "pretrain --domain counting --steps 0 --out {OUT}", "steps: Input should be greater than 0"),
    ("zero iterations", "train --domain counting --iterations 0 --out {OUT}", "iterations: Input should be greater"),
    ("option: not a number", "pretrain --domain counting --steps many --out {OUT}", "'many' is not a valid integer"),
    ("unwritable output", "pretrain --domain counting --steps 1 --out {blocker}/run", "cannot write"),
    ("teacher: not a model", "train --domain counting --teacher {no_model} --out {OUT}", "holds no model"),
    ("sample: zero samples", "sample --domain counting --checkpoint {MODEL} --num-samples 0 --out {OUT}",
     "num_samples: Input should be greater than 0"),
    ("sample: zero steps", "sample --domain counting --checkpoint {MODEL} --steps 0 --out {OUT}",
     "steps: Input should be greater than 0"),
    ("sample: unwritable output", "sample --domain counting --checkpoint {MODEL} --steps 2 --out {blocker}/x.txt",
     "is a file, not a directory"),
    ("eval: empty samples file", "eval --domain chars --samples {empty_samples} --judge none --out {OUT}",
     "holds no samples"),
    ("eval: binary samples file", "eval --domain chars --samples {binary_samples} --judge none --out {OUT}",
     "cannot read samples"),
    ("eval: zero samples", "eval --domain counting --checkpoint {MODEL} --num-samples 0 --judge none --out {OUT}",
     "num_samples: Input should be greater than 0"),
    ("eval: unwritable output", "eval --domain counting --checkpoint {MODEL} --steps 2 --num-samples 2 --judge none "
     "--out {blocker}/ev", "is a file, not a directory"),
    ("import-mdlm: not safetensors", "import-mdlm {bad_safetensors} {OUT}", "is corrupt or not a safetensors file"),
    ("demo: zero iterations", "demo --domain chars --iterations 0 --out {OUT}", "0 is not in the range x>=1"),
]


@pytest.fixture(scope="module")
def counting_model(tmp_path_factory) -> Path:
    from discdistill.config import model_config_from_preset
    from discdistill.models import DiT

    config = model_config_from_preset("tiny", vocab_size=9, mask_id=8, seq_len=8, hidden_size=16, cond_dim=8)
    return save_pretrained(DiT(config), tmp_path_factory.mktemp("model") / "m")


@pytest.mark.parametrize("argv, message", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_input_gives_one_line_a_non_zero_exit_and_no_output(toy_plugin, tmp_path, capsys, bad_files,
                                                                        counting_model, argv, message):
    bad_files["no_model"].mkdir()
    out = tmp_path / "out"
    words = argv.format(OUT=out, MODEL=counting_model, **bad_files).split()
    code, _, err = run(words, capsys)
    one_line_error(code, err)
    assert message in err, err
    assert not out.exists() and not (bad_files["blocker"].parent / "run").exists()
    assert not list(tmp_path.glob(".*.tmp")) and not any(p.name.startswith("samples") for p in counting_model.iterdir())


def test_library_runs_leave_the_callers_random_state_alone(toy_plugin, tmp_path, capsys):
    import torch

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    assert run(pretrain_args(tmp_path / "t"), capsys)[0] == 0
    assert run(["train", "--domain", "counting", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "s"),
                "--iterations", "2", "--batch-rows", "1", "--device", "cpu", "--quiet"], capsys)[0] == 0
    assert torch.equal(torch.get_rng_state(), state)


def test_resume_with_settings_that_change_the_numbers_is_refused_by_one_check(toy_plugin, tmp_path, capsys):
    out = tmp_path / "t"
    assert run(pretrain_args(out, 2), capsys)[0] == 0
    err = one_line_error(*run([*pretrain_args(out, 2, "--lr", "0.01"), "--resume"], capsys)[::2])
    assert f"--resume: {out} was trained with different settings (lr); use the same options" in err
    assert run([*pretrain_args(out, 2, "--set", "log_every=2"), "--resume"], capsys)[0] == 0  # may change
    train = ["train", "--domain", "counting", "--teacher", str(out), "--out", str(tmp_path / "s"), "--iterations", "2",
             "--batch-rows", "1", "--device", "cpu", "--quiet"]
    assert run(train, capsys)[0] == 0
    err = one_line_error(*run([*train, "--student-lr", "0.5", "--resume"], capsys)[::2])
    assert "was trained with different settings (student_lr)" in err
