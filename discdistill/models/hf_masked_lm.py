"""A Hugging Face masked language model as a denoiser: the second backbone.

    model = HFMaskedLM(HFMaskedLMConfig(vocab_size=V, mask_id=V - 1, seq_len=L,
                                        architecture={"model_type": "bert", "hidden_size": 64, ...}))
    logits = model(z, sigma)        # z: ids [B, L] or probabilities [B, L, V]; sigma is ignored

Any ``AutoModelForMaskedLM`` architecture (BERT, RoBERTa, ESM, ...) built from a config (random
weights, no download). It is time-unconditioned, as MDLM's teachers are: the noise level is not an
input (the run settings record ``time_conditioned: false``). The vocabulary is the domain's, mask id
included; the mask token doubles as the padding id, so its input embedding is the zero vector (no
padding is ever used). Probabilities enter through ``inputs_embeds = p @ E``, which is what
reward-guided sampling differentiates. ``transformers`` is imported only when one is built.

The discriminator of a run distilled from such a teacher is `HFDiscriminator`: a copy of the encoder
(the LM head removed), frozen but for its last K layers, with the same spectrally normalised head as
the DiT's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from discdistill.config import StrictModel
from discdistill.errors import ConfigError, ModelMismatchError
from discdistill.interfaces import EmbeddingDiscriminator, MaskedDiffusionTeacher
from discdistill.models.sizes import SizesFromConfig


class HFMaskedLMConfig(StrictModel):
    """The vocabulary and length of the domain, and the transformers config fields of the architecture."""

    vocab_size: int = Field(gt=1)
    mask_id: int = Field(ge=0)
    seq_len: int = Field(gt=0)
    architecture: dict[str, Any] = Field(
        default_factory=lambda: {"model_type": "bert", "hidden_size": 128, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "intermediate_size": 512},
        description="transformers config fields; model_type picks the class (bert, roberta, esm, ...).")


def _hf_config(config: HFMaskedLMConfig) -> Any:
    from transformers import AutoConfig

    fields = dict(config.architecture)
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ConfigError("backbone_config needs a model_type (e.g. bert, roberta, esm)")
    fields = {"vocab_size": config.vocab_size, "max_position_embeddings": config.seq_len, "pad_token_id": config.mask_id,
              "mask_token_id": config.mask_id, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
              **fields}
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"cannot build a transformers config for model_type {model_type!r}: {err}") from err


def _positions(z: torch.Tensor) -> torch.Tensor:
    """Positions 0..L-1 given explicitly: RoBERTa and ESM would derive them from the padding id, which is
    the mask id here, and so give every masked position the same one."""
    return torch.arange(z.shape[1], device=z.device).expand(z.shape[0], z.shape[1])


class HFMaskedLM(SizesFromConfig, MaskedDiffusionTeacher):
    """``AutoModelForMaskedLM.from_config`` behind the denoiser contract (sigma ignored)."""

    def __init__(self, config: HFMaskedLMConfig) -> None:
        super().__init__()
        from transformers import AutoModelForMaskedLM

        self.config = config
        self.net = AutoModelForMaskedLM.from_config(_hf_config(config))

    def forward(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Raw logits [B, L, V] for ids [B, L] or probabilities [B, L, V]."""
        if z.shape[1] > self.config.seq_len:
            raise ModelMismatchError(f"sequence length {z.shape[1]} exceeds the model's seq_len {self.config.seq_len}")
        positions = _positions(z)
        if z.dim() == 2:
            return self.net(input_ids=z, position_ids=positions).logits
        embedding = self.net.get_input_embeddings().weight
        return self.net(inputs_embeds=z.float() @ embedding.float(), position_ids=positions).logits


class HFDiscriminator(EmbeddingDiscriminator):
    """Per-position logits [B, L] from a copy of the teacher's encoder, last K layers trainable."""

    def __init__(self, teacher: HFMaskedLM, trainable_blocks: int = 4) -> None:
        super().__init__()
        self.config = teacher.config
        self.trunk = copy.deepcopy(teacher.net.base_model).requires_grad_(False)  # the LM head is not copied
        layers = self.trunk.encoder.layer
        self.trainable_blocks = min(trainable_blocks, len(layers))
        for layer in list(layers)[len(layers) - self.trainable_blocks:]:
            layer.requires_grad_(True)
        d = self.trunk.config.hidden_size
        self.head = nn.Sequential(spectral_norm(nn.Linear(d, d)), nn.SiLU(), spectral_norm(nn.Linear(d, 1)))

    @property
    def input_embedding(self) -> torch.Tensor:
        return self.trunk.get_input_embeddings().weight

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            return self.head(self.trunk(input_ids=z, position_ids=_positions(z)).last_hidden_state).squeeze(-1).float()
        return self.forward_embedded(z.float() @ self.input_embedding.float(), sigma)

    def forward_embedded(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(inputs_embeds=x, position_ids=_positions(x)).last_hidden_state
        return self.head(hidden).squeeze(-1).float()
