"""Every setting that changes what sampling computes travels with the checkpoint (discdistill.run_settings):
time conditioning, the schedule's eps, the domain and its settings, the tokenizer's identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from discdistill import plugins
from discdistill.checkpoint import load_pretrained, read_pretrained_config, save_pretrained
from discdistill.config import ScheduleConfig
from discdistill.diffusion import LogLinearSchedule
from discdistill.run_settings import RunSettings, domain_run_settings, run_settings_of, tokenizer_identity
from discdistill.sampling import sample
from tests.conftest import run_cli as run
from tests.conftest import small_dit

FAST = ["--batch-size", "8", "--device", "cpu", "--quiet", "--set", "log_every=1", "--set", "warmup_steps=1",
        "--set", "eval_every=100"]


def run_of(model_dir: Path) -> RunSettings:
    return run_settings_of(read_pretrained_config(model_dir))


def test_a_time_conditioned_student_records_its_sigma_rule_and_eps(toy_plugin, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert run(["pretrain", "--domain", "counting", "--out", str(teacher), "--steps", "3", *FAST,
                "--set", "time_conditioned=true"], capsys)[0] == 0
    teacher_run = run_of(teacher / "model")
    assert teacher_run.time_conditioned and teacher_run.domain == "counting"
    assert teacher_run.tokenizer == tokenizer_identity(plugins.get_domain("counting").tokenizer())
    code, _, err = run(["train", "--domain", "counting", "--teacher", str(teacher), "--out", str(tmp_path / "s"),
                        "--iterations", "2", "--batch-rows", "1", "--device", "cpu", "--quiet",
                        "--set", "warmup_steps=0", "--set", "schedule.eps=0.05"], capsys)
    assert code == 0, err
    student_run = run_of(tmp_path / "s" / "student")
    assert student_run.time_conditioned  # inherited from the teacher (time_conditioned left at None)
    assert student_run.schedule.eps == 0.05 and student_run.domain == "counting"
    assert student_run.tokenizer == teacher_run.tokenizer


@pytest.mark.parametrize("time_conditioned, eps", [(True, 1e-3), (True, 0.2), (False, 0.2)])
def test_sample_uses_the_saved_sigma_rule_and_eps_exactly(toy_plugin, tmp_path, capsys, time_conditioned, eps):
    model = small_dit(9, 8, 8, seed=3)  # structured adaLN weights: sigma changes the logits
    domain = plugins.get_domain("counting")
    settings = domain_run_settings(domain, time_conditioned=time_conditioned, schedule=ScheduleConfig(eps=eps))
    save_pretrained(model, tmp_path / "m", run=settings)
    out = tmp_path / "samples.txt"
    code, _, err = run(["sample", "--domain", "counting", "--checkpoint", str(tmp_path / "m"), "--steps", "4",
                        "--num-samples", "16", "--batch-size", "16", "--seed", "5", "--out", str(out)], capsys)
    assert code == 0, err

    def loop(sigma_rule: bool, loop_eps: float) -> list[str]:
        ids = sample(load_pretrained(tmp_path / "m").eval(), num_samples=16, seq_len=8, steps=4, mask_id=8,
                     schedule=LogLinearSchedule(loop_eps), time_conditioned=sigma_rule,
                     generator=torch.Generator().manual_seed(5)).ids
        return domain.decode_samples(ids)

    assert out.read_text().split() == loop(time_conditioned, eps)
    assert out.read_text().split() != loop(not time_conditioned, eps)  # the setting matters: this can fail
    if time_conditioned and eps != 1e-3:  # eps reaches the samples through sigma only: the unmasking
        assert out.read_text().split() != loop(time_conditioned, 1e-3)  # odds (t - s) / t do not depend on it


def test_older_checkpoints_are_read_from_the_config_they_kept():
    teacher = {"extra": {"time_conditioned": True, "config": {"schedule": {"eps": 0.01}}, "domain": "text"}}
    assert run_settings_of(teacher) == RunSettings(time_conditioned=True, schedule=ScheduleConfig(eps=0.01),
                                                   domain="text")
    student = {"extra": {"distill_config": {"time_conditioned": False, "schedule": {"eps": 0.02}}}}
    assert run_settings_of(student) == RunSettings(schedule=ScheduleConfig(eps=0.02))
    assert run_settings_of({"extra": {}}) == RunSettings()


def test_a_model_of_another_tokenizer_is_refused_even_at_equal_vocabulary(toy_plugin, tmp_path, capsys):
    markov = plugins.get_domain("markov", {"num_tokens": 8})  # vocabulary 9, like counting, other symbols
    assert markov.tokenizer().vocab_size == plugins.get_domain("counting").tokenizer().vocab_size
    settings = domain_run_settings(markov, time_conditioned=False, schedule=ScheduleConfig())
    save_pretrained(small_dit(9, 8, 8), tmp_path / "m", run=settings)
    code, _, err = run(["sample", "--domain", "counting", "--checkpoint", str(tmp_path / "m"), "--steps", "2"],
                       capsys)
    assert code == 1 and "the model was trained with another tokenizer (domain 'markov'" in err
    assert "use --domain markov" in err


def test_protein_length_mode_goes_from_the_command_line_into_checkpoint_and_report(tmp_path, capsys):
    out = tmp_path / "p"
    code, _, err = run(["pretrain", "--domain", "protein", "--domain-set", "length_mode=sampled", "--out", str(out),
                        "--steps", "2", "--seq-len", "32", *FAST, "--set", "model_overrides.hidden_size=32",
                        "--set", "model_overrides.cond_dim=16"], capsys)
    assert code == 0, err
    assert run_of(out / "model").domain_settings["length_mode"] == "sampled"
    code, stdout, err = run(["eval", "--domain", "protein", "--checkpoint", str(out), "--steps", "2",
                             "--num-samples", "4", "--batch-size", "4", "--judge", "none", "--quiet",
                             "--set", "elbo_blocks=0", "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["protocol"]["domain_settings"]["length_mode"] == "sampled"  # taken from the checkpoint
    assert "length_mode='sampled'" in stdout and "time conditioned False, schedule eps 0.001" in stdout
    code, _, err = run(["sample", "--domain", "protein", "--domain-set", "length_mode=learned", "--checkpoint",
                        str(out), "--steps", "2", "--num-samples", "2", "--out", str(tmp_path / "s.fasta")], capsys)
    assert code == 0, err
    assert "warning: --domain-set length_mode='learned' differs from the 'sampled' the model was trained with" in err


def test_unknown_domain_settings_are_listed(toy_plugin, capsys):
    code, _, err = run(["pretrain", "--domain", "markov", "--domain-set", "tokens=3"], capsys)
    assert code == 1 and "domain 'markov' has no setting 'tokens'; its settings: chain_seed, num_tokens" in err
    code, _, err = run(["pretrain", "--domain", "markov", "--domain-set", "num_tokens=1"], capsys)
    assert code == 1 and "num_tokens: Input should be greater than or equal to 2" in err


def test_domains_lists_settings_and_broken_plugins(toy_plugin, capsys):
    from tests.conftest import install_plugin

    install_plugin(toy_plugin, "toy-broken", "toy_broken", "import does_not_exist\n", "broken")
    plugins.refresh()
    code, out, _ = run(["domains"], capsys)
    assert code == 0 and "counting" in out and "markov" in out
    assert "--domain-set num_tokens=... [16]" in out
    assert "broken plugin 'broken' from package 'toy-broken': failed to load: ModuleNotFoundError" in out
