"""Optimiser pieces shared by teacher pre-training and distillation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR


def make_adamw(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
               weight_decay: float = 0.0) -> AdamW:
    return AdamW([p for p in params if p.requires_grad], lr=lr, betas=betas, weight_decay=weight_decay)


def warmup_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                        final_fraction: float = 0.0) -> LambdaLR:
    """lr factor: linear 0 -> 1 over ``warmup_steps``, then linear 1 -> ``final_fraction`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / remaining)
        return 1.0 - (1.0 - final_fraction) * progress

    return LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class GradReport:
    norm: float  # global L2 norm before clipping (non-finite entries counted as zero)
    nonfinite: bool  # some gradient entry was NaN or inf (and was zeroed)


def clip_grad_norm_finite_(params: Iterable[nn.Parameter], max_norm: float) -> GradReport:
    """Zero non-finite gradient entries, then clip the global norm to ``max_norm``.

    A non-finite entry makes the global norm non-finite, so the common case costs one foreach norm
    and one host sync, the norm doing for both the check and the clip; only a suspect gradient pays
    for the entry-wise search, the repair and a second norm (a norm can also overflow float32 with
    every entry finite: that reports finite, and the clip then zeroes the gradient). The clip is
    torch's own arithmetic (coefficient max_norm / (norm + 1e-6), capped at 1), bit for bit.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return GradReport(0.0, False)
    norm = _global_norm(grads)
    nonfinite = False
    if not bool(torch.isfinite(norm)):
        nonfinite = any(bool((~torch.isfinite(grad)).any()) for grad in grads)
        for grad in grads:
            torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)
        norm = _global_norm(grads)
    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    return GradReport(float(norm), nonfinite)


def _global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all entries of ``grads`` together (the norm of the per-tensor norms), on their device."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@torch.no_grad()
def ema_update_(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers copied)."""
    for ema_p, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p.detach(), 1.0 - decay)
    for ema_b, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_b.copy_(b)
