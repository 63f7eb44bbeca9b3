"""A second backbone end to end (a transformers masked LM built from a config, no download), and a backbone
added by a plugin, both through the registry the checkpoints name (discdistill.backbones)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from discdistill import plugins
from discdistill.checkpoint import load_pretrained, read_pretrained_config
from discdistill.distill.discriminator import load_discriminator
from discdistill.models.hf_masked_lm import HFDiscriminator, HFMaskedLM
from discdistill.run_settings import run_settings_of
from tests.conftest import install_plugin
from tests.conftest import run_cli as run

pytest.importorskip("transformers")

FAST = ["--batch-size", "8", "--device", "cpu", "--quiet", "--set", "log_every=1", "--set", "warmup_steps=1",
        "--set", "eval_every=100"]


def hf_args(model_type: str) -> list[str]:
    fields = {"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64}
    return ["--set", "backbone=HFMaskedLM", *[a for k, v in fields.items() for a in ("--set", f"backbone_config.{k}={v}")]]


@pytest.mark.parametrize("model_type", ["bert", "esm"])
def test_a_transformers_masked_lm_pretrains_distils_saves_loads_samples_and_evaluates(tmp_path, capsys, model_type):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    code, _, err = run(["pretrain", "--domain", "markov", "--out", str(teacher), "--steps", "6", *FAST,
                        *hf_args(model_type)], capsys)
    assert code == 0, err
    config = read_pretrained_config(teacher / "model")
    assert config["model_class"] == "HFMaskedLM" and config["model"]["architecture"]["model_type"] == model_type
    assert not run_settings_of(config).time_conditioned
    loaded = load_pretrained(teacher / "model")
    assert isinstance(loaded, HFMaskedLM) and loaded.net.config.model_type == model_type

    code, _, err = run(["train", "--domain", "markov", "--teacher", str(teacher), "--out", str(student),
                        "--iterations", "3", "--batch-rows", "2", "--device", "cpu", "--quiet",
                        "--set", "warmup_steps=0", "--set", "disc_blocks=1"], capsys)
    assert code == 0, err
    distilled = load_pretrained(student / "student")
    assert isinstance(distilled, HFMaskedLM)
    moved = [not torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), distilled.state_dict().values())]
    assert any(moved)  # the student is not its teacher
    disc = load_discriminator(student / "discriminator")
    assert isinstance(disc, HFDiscriminator) and disc.trainable_blocks == 1
    ids = torch.randint(0, 16, (2, 32))
    assert disc(ids, torch.zeros(2)).shape == (2, 32)

    for sampler in ("ancestral", "rgas"):
        out = tmp_path / f"{sampler}.jsonl"
        code, stdout, err = run(["sample", "--domain", "markov", "--checkpoint", str(student), "--steps", "4",
                                 "--num-samples", "3", "--sampler", sampler, "--out", str(out)], capsys)
        assert code == 0, err
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 3 and all(len(r) == 32 and max(r) < 16 for r in rows)  # one id list a line
    code, _, err = run(["eval", "--domain", "markov", "--checkpoint", str(student), "--steps", "4", "--num-samples",
                        "8", "--judge", "none", "--quiet", "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["rows"][0]["nfe"] == 4 and report["rows"][0]["metrics"]["true_nll_per_token"] > 0


TOY_BACKBONE = '''
import torch
from torch import nn
from pydantic import Field

from discdistill.backbones import Backbone
from discdistill.config import StrictModel
from discdistill.interfaces import MaskedDiffusionTeacher
from discdistill.plugins import hookimpl


class TableConfig(StrictModel):
    vocab_size: int
    mask_id: int
    seq_len: int
    width: int = Field(8, gt=0)


class TableDenoiser(MaskedDiffusionTeacher):
    """Logits from each position's own token and its position only: a network no core file knows."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.width)
        self.position = nn.Embedding(config.seq_len, config.width)
        self.out = nn.Linear(config.width, config.vocab_size)

    vocab_size = property(lambda self: self.config.vocab_size)
    mask_id = property(lambda self: self.config.mask_id)
    seq_len = property(lambda self: self.config.seq_len)

    def forward(self, z, sigma):
        return self.out(self.token(z) + self.position.weight[: z.shape[1]])


def for_domain(config, vocab_size, mask_id, seq_len):
    return TableDenoiser(TableConfig(vocab_size=vocab_size, mask_id=mask_id, seq_len=seq_len,
                                     **config.backbone_config))


@hookimpl
def discdistill_backbones():
    return [Backbone("TableDenoiser", TableDenoiser, TableConfig, for_domain, discriminator=None)]
'''


def test_a_plugin_backbone_pretrains_saves_loads_and_samples_without_editing_the_core(toy_plugin, tmp_path, capsys):
    install_plugin(toy_plugin, "toy-backbone", "toy_backbone", textwrap.dedent(TOY_BACKBONE), "backbone")
    plugins.refresh()
    out = tmp_path / "t"
    code, _, err = run(["pretrain", "--domain", "counting", "--out", str(out), "--steps", "20", *FAST, "--lr", "0.05",
                        "--set", "backbone=TableDenoiser", "--set", "backbone_config.width=12"], capsys)
    assert code == 0, err
    model = load_pretrained(out / "model")
    assert type(model).__name__ == "TableDenoiser" and model.config.width == 12
    code, stdout, err = run(["sample", "--domain", "counting", "--checkpoint", str(out), "--steps", "2",
                             "--num-samples", "4", "--out", str(tmp_path / "s.txt")], capsys)
    assert code == 0, err
    assert len((tmp_path / "s.txt").read_text().split()) == 4
    code, _, err = run(["pretrain", "--domain", "counting", "--out", str(tmp_path / "u"), "--set", "backbone=Nope"],
                       capsys)
    assert code == 1 and "unknown model class 'Nope'; registered backbones: DiT, HFMaskedLM, TableDenoiser" in err
