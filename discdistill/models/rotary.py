"""Rotary position embedding (RoPE), pure torch.

Each head's query and key vectors are rotated by an angle proportional to the position, so that the
attention score q_i . k_j depends on positions only through i - j. MDLM uses the GPT-NeoX layout
("rotate half": the first and second halves of the head dimension form the (real, imaginary) pairs)
and leaves the values unrotated; so do we, which is what makes MDLM's weights load unchanged.

The frequencies live in the buffer ``inv_freq`` [head_dim / 2]. It is persistent because MDLM's state
dict carries it (key ``rotary_emb.inv_freq``); the tables are rebuilt from it on every call (an outer
product of L x head_dim / 2 numbers, negligible next to one attention block), which keeps the module
free of mutable caches and so friendly to torch.compile and CUDA graphs.
"""

from __future__ import annotations

import torch
from torch import nn


def rotary_inv_freq(head_dim: int, base: float = 10_000.0) -> torch.Tensor:
    """omega_i = base^(-2i / head_dim) for i < head_dim / 2 (float32)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


class Rotary(nn.Module):
    """Produces the cos / sin tables [L, head_dim] for positions 0..L-1 (float32)."""

    def __init__(self, head_dim: int, base: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        self.register_buffer("inv_freq", rotary_inv_freq(head_dim, base))

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        angles = positions[:, None] * inv_freq[None, :]  # theta_{p,i} = p omega_i
        angles = torch.cat((angles, angles), dim=-1)  # both halves of a pair share the angle
        return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: multiplication by i."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., L, head_dim] by the tables [L, head_dim]; computed in float32, returned in x's dtype.

    x' = x cos(theta) + rotate_half(x) sin(theta)
    """
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)
