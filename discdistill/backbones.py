"""Backbones: the network classes a checkpoint can hold, registered by the name stored in it.

A `Backbone` says how to build its network from a saved config, how `pretrain` builds one for a domain,
and how the distillation trainer builds its discriminator. Two are built in: ``DiT`` (MDLM's diffusion
transformer, the default) and ``HFMaskedLM`` (any transformers ``AutoModelForMaskedLM`` built from a
config). A plugin adds its own through the ``discdistill_backbones`` hook (discdistill.plugins); the
checkpoint stores ``model_class`` (the backbone's name) and ``model`` (its config), so it loads back
through this registry without any edit to the core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from discdistill.config import ModelConfig, PretrainConfig, StrictModel, build, model_config_from_preset
from discdistill.errors import CheckpointError
from discdistill.interfaces import Discriminator


@dataclass(frozen=True)
class Backbone:
    name: str  # stored in config.json as "model_class"
    model_class: type[nn.Module]
    config_class: type[StrictModel]  # what ``model.config`` is, stored as "model"
    for_domain: Callable[[PretrainConfig, int, int, int], nn.Module]  # (config, vocab, mask id, length) -> model
    #: (teacher, trainable blocks) -> its discriminator; None: the DiT feature head (needs `features`, `blocks`)
    discriminator: Callable[[nn.Module, int], Discriminator] | None = None

    def build(self, config: dict[str, Any]) -> nn.Module:
        return self.model_class(build(self.config_class, config))


def _dit_for_domain(config: PretrainConfig, vocab_size: int, mask_id: int, seq_len: int) -> nn.Module:
    from discdistill.models import DiT

    return DiT(model_config_from_preset(config.model_preset, vocab_size=vocab_size, mask_id=mask_id,
                                        seq_len=seq_len, **config.model_overrides))


def _dit_discriminator(teacher: nn.Module, blocks: int) -> Discriminator:
    from discdistill.distill.discriminator import DiTDiscriminator

    return DiTDiscriminator(teacher, blocks)


def _hf_for_domain(config: PretrainConfig, vocab_size: int, mask_id: int, seq_len: int) -> nn.Module:
    from discdistill.models.hf_masked_lm import HFMaskedLM, HFMaskedLMConfig

    fields = {"vocab_size": vocab_size, "mask_id": mask_id, "seq_len": seq_len}
    if config.backbone_config:
        fields["architecture"] = config.backbone_config
    return HFMaskedLM(build(HFMaskedLMConfig, fields))


def _hf_discriminator(teacher: nn.Module, blocks: int) -> Discriminator:
    from discdistill.models.hf_masked_lm import HFDiscriminator

    return HFDiscriminator(teacher, blocks)


def builtin_backbones() -> list[Backbone]:
    from discdistill.models import DiT
    from discdistill.models.hf_masked_lm import HFMaskedLM, HFMaskedLMConfig

    return [Backbone("DiT", DiT, ModelConfig, _dit_for_domain, _dit_discriminator),
            Backbone("HFMaskedLM", HFMaskedLM, HFMaskedLMConfig, _hf_for_domain, _hf_discriminator)]


def backbone_of(model: nn.Module) -> Backbone | None:
    """The registered backbone whose class ``model`` is (exactly: a subclass registers itself), or None."""
    from discdistill import plugins

    return next((b for b in plugins.registry().backbones.values() if type(model) is b.model_class), None)


def backbone_named(name: str) -> Backbone:
    from discdistill import plugins

    backbones = plugins.registry().backbones
    if name not in backbones:
        raise CheckpointError(f"unknown model class {name!r}; registered backbones: {', '.join(sorted(backbones))} "
                              "(a plugin registers more with the discdistill_backbones hook)")
    return backbones[name]


def build_discriminator(teacher: nn.Module, trainable_blocks: int) -> Discriminator:
    """The teacher's backbone's discriminator; a network of no registered backbone gets the DiT feature head
    (which needs ``features(z, sigma)`` and ``blocks``)."""
    backbone = backbone_of(teacher)
    make = backbone.discriminator if backbone is not None and backbone.discriminator is not None else _dit_discriminator
    return make(teacher, trainable_blocks)
