"""The command line end to end on the toy plugin: pretrain, sample, resume, and the errors users meet."""

import json

import pytest
import torch

from discdistill import training
from discdistill.checkpoint import load_pretrained

from tests.conftest import run_cli

FAST = ["--set", "eval_every=5", "--set", "log_every=1", "--set", "save_every=3", "--batch-size", "8",
        "--set", "warmup_steps=2", "--device", "cpu", "--quiet"]


run = run_cli


def test_pretrain_then_sample_on_a_toy_plugin(toy_plugin, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run(["pretrain", "--domain", "counting", "--out", str(run_dir), "--steps", "6", *FAST], capsys)
    assert code == 0, err
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "checkpoint" / "state.json").is_file()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6] and "val_nll" in lines[-1]

    samples = tmp_path / "samples.txt"
    code, out, err = run(["sample", "--domain", "counting", "--checkpoint", str(run_dir), "--steps", "4",
                          "--num-samples", "5", "--out", str(samples), "--device", "cpu"], capsys)
    assert code == 0, err
    rows = samples.read_text().split()
    assert len(rows) == 5 and all(len(r) == 8 and set(r) <= set("01234567") for r in rows)
    assert "5 samples x 8 tokens, 4 denoiser passes each" in out and "tokens/s" in out


class StopAfterFourSteps(training.StopRequest):
    """Behaves as if SIGINT arrived during the fourth step."""

    polls = 0

    @property
    def requested(self):
        StopAfterFourSteps.polls += 1
        return StopAfterFourSteps.polls >= 4

    @requested.setter
    def requested(self, value):
        pass


def test_interrupt_then_resume_reproduces_an_uninterrupted_run(toy_plugin, tmp_path, capsys, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(["pretrain", "--domain", "counting", "--out", str(straight), "--steps", "6", *FAST], capsys)[0] == 0
    monkeypatch.setattr(training, "StopRequest", StopAfterFourSteps)
    code, _, err = run(["pretrain", "--domain", "counting", "--out", str(split), "--steps", "6", *FAST], capsys)
    assert code == 1 and "interrupted at step 4: checkpoint saved" in err and "--resume" in err
    monkeypatch.undo()
    state = json.loads((split / "checkpoint" / "state.json").read_text())
    assert state["meta"]["step"] == 4
    code, _, err = run(["pretrain", "--domain", "counting", "--out", str(split), "--steps", "6", *FAST, "--resume"],
                       capsys)
    assert code == 0, err
    a, b = load_pretrained(straight / "model"), load_pretrained(split / "model")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    log = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--domain", "nope"], "error: unknown domain 'nope'; installed domains:"),
    (["pretrain", "--domain", "counting", "--set", "lr=-1"], "error: invalid configuration (lr: Input should be greater than 0"),
    (["pretrain", "--domain", "counting", "--set", "not_a_field=1"], "not_a_field: Extra inputs are not permitted"),
    (["pretrain", "--domain", "counting", "--preset", "huge"], "unknown preset 'huge'"),
    (["pretrain", "--domain", "counting", "--set", "lr"], "override 'lr' is not of the form key=value"),
    (["sample", "--domain", "counting", "--checkpoint", "/does/not/exist"], "checkpoint /does/not/exist does not exist"),
])
def test_user_errors_are_one_line_and_exit_non_zero(toy_plugin, argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 1
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_config_file_and_overrides(toy_plugin, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('lr = 0.5\nsteps = 2\n[schedule]\neps = 0.01\n')
    from discdistill.config import PretrainConfig, load_config

    loaded = load_config(PretrainConfig, config, ["steps=3", "schedule.eps=0.02"])
    assert (loaded.lr, loaded.steps, loaded.schedule.eps) == (0.5, 3, 0.02)
    bad = tmp_path / "bad.json"
    bad.write_text('{"batch_size": 0}')
    code, _, err = run(["pretrain", "--domain", "counting", "--config", str(bad)], capsys)
    assert code == 1 and "batch_size: Input should be greater than 0" in err


def test_a_model_from_another_domain_is_refused(toy_plugin, tmp_path, capsys):
    from discdistill.checkpoint import save_pretrained
    from discdistill.config import model_config_from_preset
    from discdistill.models import DiT

    save_pretrained(DiT(model_config_from_preset("tiny", vocab_size=30, mask_id=29, seq_len=8)), tmp_path / "m")
    code, _, err = run(["sample", "--domain", "counting", "--checkpoint", str(tmp_path / "m")], capsys)
    assert code == 1 and "the model has vocabulary 30 (mask id 29) but domain 'counting' has 9" in err


def test_domains_lists_packages(toy_plugin, capsys):
    code, out, _ = run(["domains"], capsys)
    assert code == 0 and "counting" in out and "toy-counting" in out and "discdistill-text" in out


def test_every_command_has_help(capsys):
    for command in ["pretrain", "sample", "domains", "import-mdlm"]:
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and "Usage: discdistill" in out


def test_train_then_sample_with_rgas_on_a_toy_plugin(toy_plugin, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert run(["pretrain", "--domain", "counting", "--out", str(teacher), "--steps", "4", *FAST], capsys)[0] == 0
    student = tmp_path / "student"
    code, out, err = run(["train", "--domain", "counting", "--teacher", str(teacher), "--out", str(student),
                          "--iterations", "3", "--batch-rows", "2", "--device", "cpu", "--quiet",
                          "--set", "warmup_steps=1", "--set", "save_every=2"], capsys)
    assert code == 0, err
    assert (student / "student" / "config.json").is_file() and (student / "discriminator").is_dir()
    assert len((student / "metrics.jsonl").read_text().splitlines()) == 3
    code, out, err = run(["sample", "--domain", "counting", "--checkpoint", str(student), "--steps", "4",
                          "--num-samples", "3", "--sampler", "rgas", "--device", "cpu",
                          "--out", str(tmp_path / "s.txt")], capsys)
    assert code == 0, err
    assert "4 denoiser passes each, 12 network passes added by rgas" in out
    assert len((tmp_path / "s.txt").read_text().split()) == 3


def test_train_refuses_an_existing_run_without_resume(toy_plugin, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert run(["pretrain", "--domain", "counting", "--out", str(teacher), "--steps", "2", *FAST], capsys)[0] == 0
    args = ["train", "--domain", "counting", "--teacher", str(teacher), "--out", str(tmp_path / "s"),
            "--iterations", "1", "--batch-rows", "1", "--device", "cpu", "--quiet", "--set", "warmup_steps=0"]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args, capsys)
    assert code == 1 and "already holds a run (discriminator, metrics.jsonl, state, student); pass --resume" in err
