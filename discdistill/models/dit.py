"""The DiT denoiser: MDLM's diffusion transformer, without flash-attn.

    logits = DiT(config)(z, sigma)          # z: ids [B, L] or probabilities [B, L, V]; sigma: [B]

A bidirectional transformer whose blocks are conditioned on the noise level through adaptive layer
norm (adaLN-Zero, Peebles & Xie 2023), with rotary positions and untied input / output embeddings.
Its state-dict keys equal those of MDLM's published ``DIT`` (kuleshov-group/mdlm, models/dit.py, also
used by DUO), so MDLM checkpoints load with ``strict=True`` after stripping their ``backbone.``
prefix (see `discdistill.mdlm_import`). The network returns raw logits; the SUBS processing (mask
logit -inf, carry-over of unmasked tokens) belongs to `discdistill.diffusion`.

Precision: parameters are float32. Callers choose mixed precision with ``torch.autocast`` (MDLM trains
and samples under bf16 autocast); the norms, rotary and embeddings stay float32 inside it (see
`discdistill.models.layers`), and the logits come back in the autocast dtype, as in MDLM, to be
upcast by `diffusion.subs_log_probs` before the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from discdistill.config import ModelConfig
from discdistill.errors import ModelMismatchError
from discdistill.interfaces import MaskedDiffusionTeacher
from discdistill.models.layers import (
    DiTBlock,
    FinalLayer,
    TimestepEmbedder,
    TokenEmbedding,
    no_autocast,
)
from discdistill.models.rotary import Rotary
from discdistill.models.sizes import SizesFromConfig


class DiT(SizesFromConfig, MaskedDiffusionTeacher):
    """MDLM-compatible diffusion transformer; teacher, student and discriminator trunk share it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hidden, cond = config.hidden_size, config.cond_dim
        # Registration order matters: it is the parameter order of MDLM's EMA list.
        self.vocab_embed = TokenEmbedding(hidden, config.vocab_size)
        self.sigma_map = TimestepEmbedder(cond)
        self.rotary_emb = Rotary(hidden // config.n_heads)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden, config.n_heads, cond, mlp_ratio=config.mlp_ratio, dropout=config.dropout)
            for _ in range(config.n_blocks)
        )
        self.output_layer = FinalLayer(hidden, config.vocab_size, cond)

    def features(self, z: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk: final hidden states h [B, L, hidden] (before the output layer) and the condition c [B, cond_dim].

        A discriminator reuses this with its own per-position head in place of `output_layer`.
        """
        return self.features_from_embeddings(self.vocab_embed(z), sigma)

    def features_from_embeddings(self, x: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` after the input embedding: x [B, L, hidden] (float32) -> (h, c). Reward-guided
        sampling differentiates through this from x instead of through a [B, L, V] soft input."""
        batch, length = x.shape[0], x.shape[1]
        if length > self.config.seq_len:
            raise ModelMismatchError(
                f"sequence length {length} exceeds the model's seq_len {self.config.seq_len}; "
                "sample or train with a length the model was built for"
            )
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(batch)
        with no_autocast(x):
            c = F.silu(self.sigma_map(sigma.float()))  # [B, cond], float32 as in MDLM
        cos, sin = self.rotary_emb(length, x.device)
        for block in self.blocks:
            x = block(x, c, cos, sin)
        return x, c

    def forward(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Raw x_0 logits [B, L, V] for z (ids [B, L] or probabilities [B, L, V]) at noise level sigma [B] or scalar."""
        h, c = self.features(z, sigma)
        return self.output_layer(h, c)

    def logits_at(self, z: torch.Tensor, sigma: torch.Tensor | float, where: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] only at the n positions where ``where`` [B, L] is true (row-major order).

        The ELBO scores masked positions only; with V = 50k the output layer dominates the cost, so
        skipping the other positions halves a training step on average. Equals forward(z)[where].
        """
        h, c = self.features(z, sigma)
        return self.logits_from_features(h, c, where)

    def logits_from_features(self, h: torch.Tensor, c: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The output layer at the n positions where ``where`` [B, L] is true: [n, V] (row-major order)."""
        if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN keeps a bf16 kernel per matrix shape, and n changes every call: indexing first would
            # grow memory without bound (+0.8 GB/min seen in pre-training), so run every position (fixed shape).
            return self.output_layer(h, c)[where]
        rows = where.nonzero()[:, 0]
        return self.output_layer(h[where].unsqueeze(1), c[rows]).squeeze(1)
