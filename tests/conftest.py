"""Shared fixtures: a toy domain plugin installed the way pip installs one (dist-info + entry point)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from discdistill import plugins
from discdistill.config import model_config_from_preset
from discdistill.models import DiT

TOY_PLUGIN = '''
from pathlib import Path

import torch

from discdistill.interfaces import Domain, Tokenizer
from discdistill.plugins import hookimpl


class CountingTokenizer(Tokenizer):
    """Digits 0-7 as ids 0-7, mask id 8."""
    vocab_size = 9
    mask_id = 8

    def encode(self, text):
        return [int(ch) for ch in text]

    def decode(self, ids):
        return "".join(str(i) if i < 8 else "_" for i in ids)


class CountingDomain(Domain):
    """Sequences that count up modulo 8 from a random start: trivially learnable."""
    name = "counting"
    description = "toy: counting modulo 8"
    default_seq_len = 8

    def tokenizer(self):
        return CountingTokenizer()

    def dataset(self, split, seq_len, source=None):
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        start = torch.randint(0, 8, (256 if split == "train" else 32, 1), generator=generator)
        return (start + torch.arange(seq_len)) % 8

    def write_samples(self, samples, path, metadata):
        Path(path).write_text("\\n".join(samples) + "\\n")
        return Path(path)


@hookimpl
def discdistill_domains():
    return [CountingDomain]
'''


def install_plugin(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    """Write ``module`` and a ``dist`` dist-info whose entry point registers it in the discdistill group."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[discdistill]\n{entry_name} = {module}\n")


@pytest.fixture
def site_dir(tmp_path, monkeypatch):
    """A fresh site directory on sys.path; the plugin registry is refreshed before and after."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    plugins.refresh()
    yield site
    for name in [m for m in sys.modules if m.startswith("toy_")]:
        del sys.modules[name]
    plugins.refresh()


@pytest.fixture
def toy_plugin(site_dir):
    install_plugin(site_dir, "toy-counting", "toy_counting", textwrap.dedent(TOY_PLUGIN), "counting")
    plugins.refresh()
    return site_dir


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def small_dit(vocab_size: int, mask_id: int, seq_len: int, *, seed: int = 0, blocks: int = 2,
              structured: bool = True) -> DiT:
    """A 32-wide DiT for fast tests, in eval mode. ``structured``: the adaLN-zero and zero-initialised output
    weights are drawn from N(0, 0.3), so the logits are not uniform from the start."""
    torch.manual_seed(seed)
    config = model_config_from_preset("tiny", vocab_size=vocab_size, mask_id=mask_id, seq_len=seq_len,
                                      hidden_size=32, n_heads=2, cond_dim=16, n_blocks=blocks)
    model = DiT(config).eval()
    if structured:
        with torch.no_grad():
            for p in model.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.3)
    return model


def run_cli(argv, capsys):
    """Run the console entry point in-process; return (exit code, stdout, stderr)."""
    from discdistill.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
