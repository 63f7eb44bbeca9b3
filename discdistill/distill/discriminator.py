"""The DiDi-Instruct discriminator: a copy of the teacher with a per-token head (method.md §2.3).

    h, c = trunk.features(z, sigma)                     # teacher copy; all frozen but the last K blocks
    logit_j = W2 SiLU(W1 h_j)                            # W1, W2 spectrally normalised; [B, L]

It estimates log q_data(z_t) / q_nu(z_t) per position; it receives the real sigma_t (its trainable
adaLN layers may use it) and accepts soft inputs [B, L, V] for RGAS's gradient tilting.

Saved as ``DIR/discriminator.safetensors`` (full state dict: frozen trunk included, so a run directory
is self-contained; spectral-norm parametrisations appear as ``head.*.parametrizations.weight.{original,0._u,0._v}``)
and ``DIR/discriminator.json`` (trunk ModelConfig, K, file size and sha256). The trunk's vocabulary output layer,
unused, is dropped from the copy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from discdistill.checkpoint import load_state_strict, load_weights_dir, save_weights_dir
from discdistill.config import ModelConfig
from discdistill.errors import CheckpointError
from discdistill.interfaces import Discriminator, EmbeddingDiscriminator

DISC_WEIGHTS = "discriminator.safetensors"
DISC_CONFIG = "discriminator.json"
#: Attribute names a DiT may use for its vocabulary output layer (removed from the discriminator's trunk).
_OUTPUT_LAYER_NAMES = ("output_layer", "final_layer", "output", "head")


class DiTDiscriminator(EmbeddingDiscriminator):
    """Per-position logits [B, L] that z_t came from the data rather than from the student."""

    def __init__(self, teacher: nn.Module, trainable_blocks: int = 4) -> None:
        super().__init__()
        trunk = copy.deepcopy(teacher)
        for name in _OUTPUT_LAYER_NAMES:  # the vocabulary projection is replaced by `head`
            if isinstance(getattr(trunk, name, None), nn.Module):
                setattr(trunk, name, nn.Identity())
                break
        trunk.requires_grad_(False)
        blocks = trunk.blocks
        self.trainable_blocks = min(trainable_blocks, len(blocks))
        for block in list(blocks)[len(blocks) - self.trainable_blocks:]:
            block.requires_grad_(True)
        self.trunk = trunk
        d = trunk.config.hidden_size
        self.head = nn.Sequential(spectral_norm(nn.Linear(d, d)), nn.SiLU(), spectral_norm(nn.Linear(d, 1)))

    @property
    def config(self) -> ModelConfig:
        return self.trunk.config

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """z: ids [B, L] or probabilities [B, L, V]; sigma [B] -> logits [B, L] (float32)."""
        h, _ = self.trunk.features(z, sigma)
        return self.head(h).squeeze(-1).float()

    @property
    def input_embedding(self) -> torch.Tensor:
        return self.trunk.vocab_embed.embedding

    def forward_embedded(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, _ = self.trunk.features_from_embeddings(x, sigma)
        return self.head(h).squeeze(-1).float()


def save_discriminator(disc: Discriminator, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``directory`` atomically: safetensors weights + JSON config (checkpoint.save_weights_dir). The
    header names the backbone whose discriminator it is, so `load_discriminator` rebuilds any of them."""
    header = {"model_class": type(disc).__name__, "backbone": _backbone_name(disc.config),
              "model": disc.config.model_dump(), "trainable_blocks": disc.trainable_blocks, "extra": extra or {}}
    return save_weights_dir(directory, disc.state_dict(), header, config_name=DISC_CONFIG, weights_name=DISC_WEIGHTS)


def _backbone_name(config: Any) -> str:
    from discdistill import plugins

    return next(b.name for b in plugins.registry().backbones.values() if isinstance(config, b.config_class))


def load_discriminator(directory: str | Path, map_location: str | torch.device = "cpu") -> Discriminator:
    """Rebuild the discriminator written by `save_discriminator` (files verified, strict weight match)."""
    from discdistill.backbones import backbone_named, build_discriminator

    directory = Path(directory)
    if not (directory / DISC_CONFIG).is_file():
        raise CheckpointError(f"{directory} holds no discriminator ({DISC_CONFIG} not found); "
                              "give a distillation run directory or its discriminator/ folder")
    meta, state = load_weights_dir(directory, config_name=DISC_CONFIG, weights_name=DISC_WEIGHTS,
                                   what="discriminator")
    backbone = backbone_named(meta.get("backbone", "DiT"))  # files before the field held DiT discriminators
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG alone
        disc = build_discriminator(backbone.build(meta["model"]), meta["trainable_blocks"])
    load_state_strict(disc, state, directory)
    return disc.to(map_location)
