"""DiDi-Instruct losses and reward shaping: pure functions on tensors (method.md §2.3-§2.5).

Conventions: ``masked`` is a bool [B, L] marking the positions a term averages over (None: every
position); averages are token-level (sum over every selected position of the batch / their count),
and a term with no selected position is 0. Log-probabilities are SUBS-processed (mask column -inf),
[B, L, V], or [n, V] rows already gathered at the masked positions (then pass ``masked=None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from discdistill.diffusion import LogLinearSchedule

#: Log-probabilities are clamped to this floor before p log p products, so 0 * (-inf) never makes NaN.
_LOG_FLOOR = -1e4


def omega(tau: torch.Tensor, mode: Literal["simplified", "constant"] = "simplified",
          clamp: tuple[float, float] = (0.1, 10.0), schedule: LogLinearSchedule = LogLinearSchedule()) -> torch.Tensor:
    """omega(t) = clamp(-alpha'_t / (1 - alpha_t), lo, hi) = clamp(1/t, lo, hi) ('simplified'), or 1 ('constant')."""
    if mode == "constant":
        return torch.ones_like(tau)
    if mode != "simplified":
        raise ValueError(f"unknown omega mode {mode!r}")
    return schedule.loss_weight(tau).clamp(clamp[0], clamp[1])


def beta_density(tau: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Beta(a, b) pdf at tau: tau^(a-1) (1-tau)^(b-1) / B(a, b)."""
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return torch.exp((a - 1.0) * torch.log(tau) + (b - 1.0) * torch.log1p(-tau) - log_norm)


def group_advantages(rewards: torch.Tensor, group_size: int, clip: float = 3.0, eps: float = 1e-8) -> torch.Tensor:
    """A_i = clamp((r_i - mean_g(r)) / (std_g(r) + eps), -clip, clip) over contiguous groups of ``group_size``.

    std is the unbiased (n - 1) sample standard deviation, as ``torch.std``; a group of one gets A = 0.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.reshape(-1, group_size)
    mean = groups.mean(-1, keepdim=True)
    std = groups.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((groups - mean) / (std + eps)).clamp(-clip, clip).reshape(rewards.shape)


def advantages(rewards: torch.Tensor, mode: Literal["group", "batch", "none"], group_size: int,
               clip: float = 3.0) -> torch.Tensor:
    """'group': `group_advantages`; 'batch': one group of the whole batch; 'none': A = r."""
    if mode == "group":
        return group_advantages(rewards, group_size, clip)
    if mode == "batch":
        return group_advantages(rewards, rewards.numel(), clip)
    if mode == "none":
        return rewards
    raise ValueError(f"unknown advantage normalisation {mode!r}")


def _masked_mean(values: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """sum_{masked} values / max(1, #masked) (plain mean when ``masked`` is None)."""
    if masked is None:
        return values.mean() if values.numel() else values.sum()
    weight = masked.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, mask_real: torch.Tensor,
                       mask_fake: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """( mean_{masked} BCE(l_real, 1 - s) + mean_{masked} BCE(l_fake, s) ) / 2, per-token logits [B, L]."""
    real = F.binary_cross_entropy_with_logits(
        logits_real.float(), torch.full_like(logits_real, 1.0 - smoothing, dtype=torch.float32), reduction="none")
    fake = F.binary_cross_entropy_with_logits(
        logits_fake.float(), torch.full_like(logits_fake, smoothing, dtype=torch.float32), reduction="none")
    return 0.5 * (_masked_mean(real, mask_real) + _masked_mean(fake, mask_fake))


def discriminator_accuracy(logits_real: torch.Tensor, logits_fake: torch.Tensor, mask_real: torch.Tensor,
                           mask_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fraction of masked positions classified right: (P[l_real > 0], P[l_fake < 0])."""
    return _masked_mean((logits_real > 0).float(), mask_real), _masked_mean((logits_fake < 0).float(), mask_fake)


def token_log_odds_reward(disc_logits: torch.Tensor, masked: torch.Tensor, clamp: float = 8.0,
                          reduce: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """r_i = mean (or sum) over j masked in row i of clamp(logit_ij, -c, c), float32 (0 with nothing masked) [B]."""
    weight = masked.float()
    total = (disc_logits.float().clamp(-clamp, clamp) * weight).sum(-1)
    if reduce == "sum":
        return total
    if reduce != "mean":
        raise ValueError(f"unknown reward reduction {reduce!r}")
    return total / weight.sum(-1).clamp_min(1.0)


def sequence_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor,
                                smoothing: float = 0.1) -> torch.Tensor:
    """( mean_i BCE(S_real_i, 1 - s) + mean_i BCE(S_fake_i, s) ) / 2 with S_i = sum_j logit_ij over every position.

    The sequence-level objective: one label per row, its logit the sum of the per-position logits, so each
    position learns an additive share of log q_data(z) / q_nu(z) (local evidence stays local, as the
    per-transition log-ratios of a Markov chain do) instead of every position estimating the whole ratio.
    """
    real, fake = logits_real.float().sum(-1), logits_fake.float().sum(-1)
    return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - smoothing))
                  + F.binary_cross_entropy_with_logits(fake, torch.full_like(fake, smoothing)))


def sequence_discriminator_accuracy(logits_real: torch.Tensor,
                                    logits_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fraction of rows classified right by their summed logit: (P[S_real > 0], P[S_fake < 0])."""
    return (logits_real.float().sum(-1) > 0).float().mean(), (logits_fake.float().sum(-1) < 0).float().mean()


def sequence_log_odds_reward(disc_logits: torch.Tensor, clamp: float = 8.0) -> torch.Tensor:
    """r_i = clamp(sum_j logit_ij, -c L, c L), float32 [B]: the sequence log-odds (c per position on average)."""
    bound = clamp * disc_logits.shape[-1]
    return disc_logits.float().sum(-1).clamp(-bound, bound)


def quadrature_times(m: int, low: float, high: float) -> torch.Tensor:
    """The m midpoints t_k = low + (k + 1/2) (high - low) / m, k = 0..m-1 (float64) [m]."""
    return low + (torch.arange(m, dtype=torch.float64) + 0.5) * (high - low) / m


@dataclass
class KLTerms:
    forward: torch.Tensor  # KL(teacher || student), token mean over masked positions
    reverse: torch.Tensor  # KL(student || teacher)
    value: torch.Tensor  # the selected divergence (what the loss uses)


def kl_terms(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, masked: torch.Tensor | None,
             kind: Literal["forward", "reverse", "jeffrey"] = "forward", beta: float = 0.5) -> KLTerms:
    """forward = sum_v p_T (log p_T - log p_S), reverse = sum_v p_S (log p_S - log p_T), Jeffrey = (1-b) fwd + b rev.

    Both inputs are SUBS log-probabilities [B, L, V]; each divergence is averaged over masked positions.
    The teacher side is treated as a constant (detached).
    """
    log_s = student_log_probs.float().clamp_min(_LOG_FLOOR)
    log_t = teacher_log_probs.detach().float().clamp_min(_LOG_FLOOR)
    forward = _masked_mean((log_t.exp() * (log_t - log_s)).sum(-1), masked)
    reverse = _masked_mean((log_s.exp() * (log_s - log_t)).sum(-1), masked)
    if kind == "forward":
        value = forward
    elif kind == "reverse":
        value = reverse
    elif kind == "jeffrey":
        value = (1.0 - beta) * forward + beta * reverse
    else:
        raise ValueError(f"unknown KL kind {kind!r}")
    return KLTerms(forward, reverse, value)


def masked_entropy(log_probs: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """H = mean_{masked} -sum_v p_v log p_v of the x_0 distributions [B, L, V]."""
    log_p = log_probs.float().clamp_min(_LOG_FLOOR)
    return _masked_mean(-(log_p.exp() * log_p).sum(-1), masked)


def student_policy_loss(omega_weights: torch.Tensor, advantages: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """L_pg = -mean_i[ omega_i A_i log p_nu(x_i) ], omega and A detached (score-function estimator)."""
    return -(omega_weights.detach() * advantages.detach() * log_prob).mean()


def window_sum(values: torch.Tensor, half_width: int) -> torch.Tensor:
    """W_ij = sum_{|k - j| <= w} v_ik over the positions that exist (no wrap-around), [B, L] -> [B, L]."""
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    padded = F.pad(values.cumsum(-1), (half_width + 1, 0))  # padded[:, j] = sum_{k < j - w} v_k (0 before the start)
    length = values.shape[-1]
    right = padded[:, (torch.arange(length, device=values.device) + 2 * half_width + 1).clamp(max=length + half_width)]
    return right - padded[:, :length]


def local_advantages(local_rewards: torch.Tensor, mode: Literal["group", "batch", "none"], group_size: int,
                     clip: float = 3.0, eps: float = 1e-8) -> torch.Tensor:
    """A_ij = clamp((R_ij - mean_{i' in set} R_i'j) / (std over the set's (i', j) of the centred R + eps), +-clip).

    The per-token advantage of ``credit = 'local'``: R [N, L] is each position's windowed reward; the
    baseline is per position (a position's window does not reach as far at the sequence's ends) over the
    G samples of the group ('group') or the whole batch ('batch'), and one scale serves the set. 'none':
    A = R.
    """
    if mode == "none":
        return local_rewards
    if mode not in ("group", "batch"):
        raise ValueError(f"unknown advantage normalisation {mode!r}")
    size = group_size if mode == "group" else local_rewards.shape[0]
    if local_rewards.shape[0] % size:
        raise ValueError(f"{local_rewards.shape[0]} rows do not split into groups of {size}")
    sets = local_rewards.reshape(-1, size, local_rewards.shape[-1])  # [sets, size, L]
    centred = sets - sets.mean(1, keepdim=True)
    scale = centred.flatten(1).std(-1) if size > 1 else torch.zeros(sets.shape[0], device=sets.device)
    return (centred / (scale[:, None, None] + eps)).clamp(-clip, clip).reshape(local_rewards.shape)


def local_policy_loss(omega_weights: torch.Tensor, advantages: torch.Tensor,
                      position_log_prob: torch.Tensor) -> torch.Tensor:
    """L_pg = -mean_i[ omega_i sum_j A_ij log p_nu(x_ij) ]: each token credited with its own advantage [N, L].

    Equal to `student_policy_loss` when A_ij = A_i at every position.
    """
    return -(omega_weights.detach()[:, None] * advantages.detach() * position_log_prob).sum(-1).mean()
