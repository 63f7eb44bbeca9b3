"""Shared fixtures: a toy domain plugin installed the way pip installs one (dist-info + entry point)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from discdistill import plugins

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
