"""The held-out likelihood bound of a denoiser: the MDLM ELBO on reference blocks, in nats per token.

    NLL <= E_t [ (1 - eps)/(1 - alpha_t) * sum_{j: z_j = m} -log p(x_j | z_t) ] / L     (diffusion.mdlm_loss)

Estimated with one antithetic time draw per block and fixed noise (seeded), so two checkpoints scored
on the same blocks see the same corruption (`training.fixed_noise_nll`, the loop pre-training's
validation uses). For a character domain, `diffusion.nats_to_bits` of it is bits per character: the
unit text8 results are published in (MDLM 1.40, MD4 1.37, SEDD 1.39; upper bounds).
"""

from __future__ import annotations

import torch

from discdistill.diffusion import LogLinearSchedule
from discdistill.interfaces import MaskedDiffusionTeacher
from discdistill.training import ElboObjective, fixed_noise_nll


def elbo_nll(model: MaskedDiffusionTeacher, blocks: torch.Tensor, *, time_conditioned: bool, batch_size: int = 16,
             t_min: float = 1e-3, eps: float = 1e-3, seed: int = 0) -> float:
    """ELBO NLL bound in nats per token of ``blocks`` [N, L] (mean over blocks, each block weighted equally)."""
    assert blocks.dim() == 2 and len(blocks), "reference blocks [N, L], N >= 1"
    objective = ElboObjective(model, LogLinearSchedule(eps), time_conditioned).eval()
    return fixed_noise_nll(objective, blocks, batch_size=batch_size, max_batches=None, t_min=t_min, seed=seed,
                           device=next(model.parameters()).device)
