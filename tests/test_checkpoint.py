"""Checkpoints: round trips, atomicity, corruption, format versions, training state."""

import json

import pytest
import torch

from discdistill.checkpoint import (
    load_pretrained, load_training_state, save_pretrained, save_training_state,
)
from discdistill.config import model_config_from_preset
from discdistill.errors import CheckpointError, StorageError
from discdistill.models import DiT
from discdistill.optim import make_adamw, warmup_linear_decay


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return DiT(model_config_from_preset("tiny", vocab_size=11, mask_id=10, seq_len=8))


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path / "m", extra={"note": "hi"})
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "m" / "config.json").read_text())["extra"] == {"note": "hi"}


def test_overwrite_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    save_pretrained(tiny_model(0), tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("discdistill.checkpoint.save_file", disk_full)
    with pytest.raises(StorageError, match=r"disk full while writing .*m; free space .* previous m is intact"):
        save_pretrained(tiny_model(1), tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before  # the good one survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp directory left behind


def test_truncated_weights_are_detected(tmp_path):
    save_pretrained(tiny_model(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt: model.safetensors has .* bytes, expected"):
        load_pretrained(tmp_path / "m")


def test_newer_format_is_refused_with_advice(tmp_path):
    save_pretrained(tiny_model(), tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    data = json.loads(config.read_text())
    data["format_version"] = 99
    config.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="format version 99; this discdistill reads up to 1. Upgrade"):
        load_pretrained(tmp_path / "m")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a discdistill checkpoint"):
        load_pretrained(tmp_path / "empty")


def test_training_state_restores_optimiser_schedule_and_rng(tmp_path):
    model = tiny_model()
    optimizer = make_adamw(model.parameters(), 1e-2)
    scheduler = warmup_linear_decay(optimizer, 2, 10)
    x = torch.randint(0, 10, (2, 8))
    for _ in range(3):
        model(x, torch.zeros(2)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    torch.manual_seed(123)
    save_training_state(tmp_path / "s", modules={"m": model}, optimizers={"m": optimizer},
                        schedulers={"m": scheduler}, meta={"step": 3})
    expected_noise = torch.rand(4)

    fresh = tiny_model(seed=5)
    fresh_opt = make_adamw(fresh.parameters(), 1e-2)
    fresh_sched = warmup_linear_decay(fresh_opt, 2, 10)
    meta = load_training_state(tmp_path / "s", modules={"m": fresh}, optimizers={"m": fresh_opt},
                               schedulers={"m": fresh_sched})
    assert meta == {"step": 3}
    assert torch.equal(torch.rand(4), expected_noise)  # RNG stream continues exactly
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
        if a in optimizer.state:
            saved, restored = optimizer.state[a], fresh_opt.state[b]
            assert torch.equal(saved["exp_avg"], restored["exp_avg"])
            assert torch.equal(saved["exp_avg_sq"], restored["exp_avg_sq"])
