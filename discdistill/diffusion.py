"""Masked (absorbing-state) diffusion: schedule, corruption, SUBS, the MDLM ELBO, the ancestral posterior.

Notation (method.md §1): x clean ids, z_t noised ids, m the mask id, alpha_t the probability a
position is still clean at time t in [0, 1]. Log-linear schedule: alpha_t = 1 - (1 - eps) t.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


@dataclass(frozen=True)
class LogLinearSchedule:
    """alpha_t = 1 - (1 - eps) t;  alpha'_t = -(1 - eps);  sigma_t = -log alpha_t."""

    eps: float = 1e-3

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.alpha(t))

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight -alpha'_t / (1 - alpha_t) = (1 - eps) / ((1 - eps) t) ~ 1/t."""
        return -self.alpha_prime(t) / (1.0 - self.alpha(t))


def corrupt(x: torch.Tensor, alpha: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
            shared_rows: int = 1) -> torch.Tensor:
    """Sample z ~ q(z_t | x): each position stays x_j w.p. alpha (per row, [B] or [B, 1]), else becomes m.

    ``shared_rows`` = G > 1: each block of G consecutive rows uses the same uniforms (common random
    numbers), so rows of a block with the same alpha are masked at the same positions.
    """
    alpha = alpha.reshape(-1, 1) if alpha.dim() <= 1 else alpha
    if shared_rows > 1:
        u = torch.rand((x.shape[0] // shared_rows, *x.shape[1:]), device=x.device, generator=generator)
        u = u.repeat_interleave(shared_rows, 0)
    else:
        u = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where(u < alpha, x, torch.full_like(x, mask_id))


def masked_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """log p(x_0 | z_t) at positions where z_t is the mask: float32 log-softmax with the mask logit removed.

    `subs_log_probs` at a masked position, without building the carry-over one-hots: the samplers call
    it at the positions they draw, which are all masked.
    """
    mask_column = torch.tensor([mask_id], device=logits.device)
    return logits.float().index_fill(-1, mask_column, NEG_INF).log_softmax(-1)


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterisation: log p(x_0 | z_t), [B, L, V].

    The mask logit is set to -inf (x_0 is never m) and, where z is not m, the distribution is the
    one-hot of z (unmasked tokens are carried over). ``z`` may be ids [B, L] or soft [B, L, V]; for a
    soft z only the mask logit is removed (carry-over needs hard ids).
    """
    log_probs = masked_log_probs(logits, mask_id)
    if z.dim() == 3:
        return log_probs
    unmasked = (z != mask_id).unsqueeze(-1)
    carry = torch.full_like(log_probs, NEG_INF).scatter_(-1, z.unsqueeze(-1), 0.0)
    return torch.where(unmasked, carry, log_probs)


def antithetic_times(batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                     t_min: float = 0.0) -> torch.Tensor:
    """Stratified t in (t_min, 1]: one uniform offset shared by B evenly spaced strata (variance reduction)."""
    offset = torch.rand(1, device=device, generator=generator)
    t = (offset + torch.arange(batch_size, device=device) / batch_size) % 1.0
    return t_min + (1.0 - t_min) * t


def mdlm_loss(
    logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor, schedule: LogLinearSchedule, mask_id: int,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MDLM continuous-time ELBO per token, averaged over the batch:

    L = E_t [ (-alpha'_t / (1 - alpha_t)) * sum_{j: z_j = m} -log p(x_j | z_t) ] / L

    ``loss_mask`` [B, L] (optional) marks positions that count (e.g. not padding); the sum is then
    divided by the number of counted positions instead of L.
    """
    log_p = subs_log_probs(logits, z, mask_id)
    nll = -log_p.gather(-1, x.unsqueeze(-1)).squeeze(-1)  # [B, L]; 0 at unmasked positions (carry-over)
    masked = z == mask_id
    nll = torch.where(masked, nll, torch.zeros_like(nll))
    weight = schedule.loss_weight(t).reshape(-1, 1)
    if loss_mask is None:
        return (weight * nll).sum() / nll.numel()
    return (weight * nll * loss_mask).sum() / loss_mask.sum().clamp_min(1)


def masked_token_nll(logits: torch.Tensor, targets: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log p(x_0 = target) under SUBS for logits [n, V] at masked positions, fused (cross-entropy kernel)."""
    mask_column = torch.tensor([mask_id], device=logits.device)
    return F.cross_entropy(logits.float().index_fill(-1, mask_column, NEG_INF), targets, reduction="none")


#: ln 2: an NLL in nats divided by it is in bits (bits per character for a character domain).
NATS_PER_BIT = math.log(2.0)


def nats_to_bits(nats: float) -> float:
    return nats / NATS_PER_BIT


def mdlm_loss_at_masked(logits: torch.Tensor, x: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                        schedule: LogLinearSchedule, mask_id: int) -> torch.Tensor:
    """`mdlm_loss` from logits [n, V] computed only at the masked positions ``masked`` [B, L]."""
    weight = schedule.loss_weight(t).reshape(-1, 1).expand(masked.shape)[masked]
    return (weight * masked_token_nll(logits, x[masked], mask_id)).sum() / masked.numel()


def posterior_probs(log_p_x0: torch.Tensor, z: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor,
                    mask_id: int) -> torch.Tensor:
    """Ancestral posterior q(z_s | z_t, x_0 ~ p) for s < t, [B, L, V] (rows sum to 1).

    At a masked position: P(v) = p(x_0 = v | z_t) (alpha_s - alpha_t) / (1 - alpha_t) and
    P(stay m) = (1 - alpha_s) / (1 - alpha_t). At an unmasked position: one-hot of z_t.
    ``alpha_t``, ``alpha_s`` are [B] or scalars. Computed in the dtype of ``log_p_x0``.
    """
    shape = (-1, 1, 1)
    alpha_t = torch.as_tensor(alpha_t, dtype=log_p_x0.dtype, device=log_p_x0.device).reshape(shape)
    alpha_s = torch.as_tensor(alpha_s, dtype=log_p_x0.dtype, device=log_p_x0.device).reshape(shape)
    unmask_prob = (alpha_s - alpha_t) / (1.0 - alpha_t)
    stay_prob = (1.0 - alpha_s) / (1.0 - alpha_t)
    probs = log_p_x0.exp() * unmask_prob
    probs[..., mask_id] = stay_prob.reshape(-1, 1).expand(probs.shape[:-1])
    carry = F.one_hot(z, probs.shape[-1]).to(probs.dtype)
    return torch.where((z == mask_id).unsqueeze(-1), probs, carry)
