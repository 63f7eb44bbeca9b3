"""The DiT's building blocks: token and noise-level embeddings, the adaLN-Zero block, the output layer.

Module and parameter names follow MDLM's published DiT (kuleshov-group/mdlm, models/dit.py) so that
its checkpoints load without renaming: ``embedding``, ``mlp.0`` / ``mlp.2``, ``norm1``, ``attn_qkv``,
``attn_out``, ``norm2``, ``adaLN_modulation``, ``norm_final``, ``linear``. Initialisation follows MDLM
too: every adaLN modulation and the output projection start at zero (adaLN-Zero), so an untrained
network is the identity on the residual stream and predicts uniform logits.

Precision under ``torch.autocast``: layer norms, rotary embedding, the soft-input embedding and the
noise-level embedding run in float32 (as in MDLM); the linear layers run in the autocast dtype and the
residual stream stays float32 because the embeddings that start it are float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from discdistill.models.rotary import apply_rotary


def no_autocast(x: torch.Tensor) -> torch.autocast:
    """A context in which ``x``'s device computes in the tensors' own dtypes."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive layer-norm affine: x (1 + scale) + shift, with shift / scale [B, 1, H] from the condition."""
    return x * (1.0 + scale) + shift


class LayerNorm(nn.Module):
    """Layer norm with a learned scale and no bias (MDLM's), always computed in float32.

    The bias is redundant: every norm is followed by an adaLN shift. float32 because the variance of
    a bf16 residual stream is too coarse at width 768+.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with no_autocast(x):
            return F.layer_norm(x.float(), (self.dim,)) * self.weight.float()  # (x - mu) / sd * w


class TokenEmbedding(nn.Module):
    """Token ids [B, L] -> vectors [B, L, H]; probabilities [B, L, V] -> their expected vector z @ E.

    The soft path is what reward-guided sampling differentiates through; for a one-hot z it equals the
    lookup exactly. Computed in float32 so the two paths agree under autocast.
    """

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, hidden_size))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))  # MDLM's init (nn.Linear's default)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            return F.embedding(z, self.embedding)
        if z.dim() != 3 or not z.is_floating_point():
            raise ValueError(f"expected ids [B, L] or probabilities [B, L, V], got {tuple(z.shape)} {z.dtype}")
        with no_autocast(z):
            return z.float() @ self.embedding.float()  # sum_v p_v E_v


class TimestepEmbedder(nn.Module):
    """Noise level sigma [B] -> conditioning vector [B, cond_dim]: sinusoidal features, then an MLP.

    Called ``sigma_map`` in the DiT (MDLM's name). The features are DiT's / GLIDE's
    [cos(sigma f_k), sin(sigma f_k)] with f_k = max_period^(-k / half), k < half.
    """

    def __init__(self, cond_dim: int, frequency_dim: int = 256, max_period: float = 10_000.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, cond_dim, bias=True),
            nn.SiLU(),
            nn.Linear(cond_dim, cond_dim, bias=True),
        )

    def sinusoidal(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        exponents = torch.arange(half, device=sigma.device, dtype=torch.float32) / half
        freqs = torch.exp(-math.log(self.max_period) * exponents)  # f_k = max_period^(-k / half)
        args = sigma.float()[:, None] * freqs[None, :]
        features = torch.cat((args.cos(), args.sin()), dim=-1)
        if self.frequency_dim % 2:
            features = F.pad(features, (0, 1))
        return features

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal(sigma))


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the condition c (adaLN-Zero).

    x <- x + g_a * Dropout(Attn(modulate(LN(x), s_a, k_a)))
    x <- x + g_m * Dropout(MLP(modulate(LN(x), s_m, k_m)))
    with (s_a, k_a, g_a, s_m, k_m, g_m) = Linear(c), zero at initialisation (the block starts as the
    identity). Attention is bidirectional with rotary positions; dropout acts on each branch's output
    before its gate, as in MDLM (no dropout on attention probabilities).
    """

    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        # Registration order = parameter order = MDLM's (its EMA stores parameters as a list in this order).
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * dim, dim, bias=True),
        )
        self.dropout2 = nn.Dropout(dropout)
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over all positions, per head; [B, L, H] -> [B, L, H]."""
        batch, length, _ = x.shape
        qkv = self.attn_qkv(x).view(batch, length, 3, self.n_heads, self.head_dim)  # MDLM's (three h d) layout
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return out.transpose(1, 2).reshape(batch, length, -1)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)
        )
        h = self.attention(modulate(self.norm1(x), shift_msa, scale_msa), cos, sin)
        x = x + gate_msa * self.dropout1(self.attn_out(h))
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp * self.dropout2(h)


class FinalLayer(nn.Module):
    """Hidden states [B, L, H] -> logits [B, L, V]: a modulated norm, then a linear map.

    logits = W modulate(LN(h), s, k) + b, with (s, k) = Linear(c). W, b and the modulation start at
    zero, so an untrained model outputs all-zero logits (a uniform x_0 distribution).
    """

    def __init__(self, hidden_size: int, out_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_dim, bias=True)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size, bias=True)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(h), shift, scale))
