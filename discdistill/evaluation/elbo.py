"""The held-out likelihood bound of a denoiser: the MDLM ELBO on reference blocks, in nats and bits per token.

    NLL <= E_t [ (1 - eps)/(1 - alpha_t) * sum_{j: z_j = m} -log p(x_j | z_t) ] / L     (diffusion.mdlm_loss)

Estimated with one antithetic time draw per block and fixed noise (seeded), so two checkpoints scored
on the same blocks see the same corruption. For a character domain, bits per token is bits per
character: the unit text8 results are published in (MDLM 1.40, MD4 1.37, SEDD 1.39; upper bounds).
"""

from __future__ import annotations

import math

import torch

from discdistill.diffusion import LogLinearSchedule
from discdistill.interfaces import MaskedDiffusionTeacher
from discdistill.training import ElboObjective, draw_noise

NATS_PER_BIT = math.log(2.0)


@torch.no_grad()
def elbo_nll(model: MaskedDiffusionTeacher, blocks: torch.Tensor, *, time_conditioned: bool, batch_size: int = 16,
             t_min: float = 1e-3, eps: float = 1e-3, seed: int = 0) -> float:
    """ELBO NLL bound in nats per token of ``blocks`` [N, L] (mean over blocks, each block weighted equally)."""
    assert blocks.dim() == 2 and len(blocks), "reference blocks [N, L], N >= 1"
    device = next(model.parameters()).device
    objective = ElboObjective(model, LogLinearSchedule(eps), time_conditioned).eval()
    generator = torch.Generator(device=device).manual_seed(seed + 12345)
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        x = blocks[start:start + batch_size].to(device).long()
        t, u = draw_noise(len(x), x.shape[1], t_min, device, generator)
        total += float(objective(x, t, u)) * len(x)
    return total / len(blocks)


def bits(nats: float) -> float:
    return nats / NATS_PER_BIT
