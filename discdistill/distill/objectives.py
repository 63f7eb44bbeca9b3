"""How the discriminator's per-position logits become its loss, its accuracy and the student's reward.

    token     (method.md §2.3): every masked position is one BCE example labelled with its row's side;
              reward = mean (or sum) over masked positions of the clamped logits.
    sequence  (extension): one BCE example per row whose logit is S = sum_j logit_j over every position;
              reward = S (clamped to c L).

Each also gives a reward per position (``position_reward``, [B, L]), which ``credit = 'local'`` turns
into per-token advantages (losses.local_advantages).

The token objective asks every masked position to estimate the whole log-ratio log q_data(z)/q_nu(z)
through attention; the sequence objective lets each position contribute an additive share, so evidence
stays where it is (a forbidden transition lowers the logits next to it) and a sample with two defects
scores lower than a sample with one instead of both saturating at the clamp. docs/distillation.md
compares them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

import torch

from discdistill.distill.losses import (
    discriminator_accuracy,
    discriminator_loss,
    sequence_discriminator_accuracy,
    sequence_discriminator_loss,
    sequence_log_odds_reward,
    token_log_odds_reward,
)


class DiscriminatorObjective(ABC):
    """Loss, accuracy and reward of per-position discriminator logits [B, L] (``masked``: z == mask)."""

    @abstractmethod
    def loss(self, logits_real: torch.Tensor, logits_fake: torch.Tensor, mask_real: torch.Tensor,
             mask_fake: torch.Tensor, smoothing: float) -> torch.Tensor: ...

    @abstractmethod
    def accuracy(self, logits_real: torch.Tensor, logits_fake: torch.Tensor, mask_real: torch.Tensor,
                 mask_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def reward(self, logits: torch.Tensor, masked: torch.Tensor, clamp: float) -> torch.Tensor: ...

    @abstractmethod
    def position_reward(self, logits: torch.Tensor, masked: torch.Tensor, clamp: float) -> torch.Tensor:
        """[B, L]: each position's share of the reward, clamped to [-c, c] (``credit = 'local'``)."""


class TokenObjective(DiscriminatorObjective):
    """method.md: per-token BCE over masked positions; reward = reduced clamped log-odds over them."""

    def __init__(self, reduce: Literal["mean", "sum"] = "mean") -> None:
        self.reduce = reduce

    def loss(self, logits_real, logits_fake, mask_real, mask_fake, smoothing):
        return discriminator_loss(logits_real, logits_fake, mask_real, mask_fake, smoothing)

    def accuracy(self, logits_real, logits_fake, mask_real, mask_fake):
        return discriminator_accuracy(logits_real, logits_fake, mask_real, mask_fake)

    def reward(self, logits, masked, clamp):
        return token_log_odds_reward(logits, masked, clamp, self.reduce)

    def position_reward(self, logits, masked, clamp):
        return logits.float().clamp(-clamp, clamp) * masked.float()  # only masked positions carry evidence


class SequenceObjective(DiscriminatorObjective):
    """One BCE example per row, logit S = sum of the per-position logits; reward = clamped S."""

    def loss(self, logits_real, logits_fake, mask_real, mask_fake, smoothing):
        return sequence_discriminator_loss(logits_real, logits_fake, smoothing)

    def accuracy(self, logits_real, logits_fake, mask_real, mask_fake):
        return sequence_discriminator_accuracy(logits_real, logits_fake)

    def reward(self, logits, masked, clamp):
        return sequence_log_odds_reward(logits, clamp)

    def position_reward(self, logits, masked, clamp):
        return logits.float().clamp(-clamp, clamp)  # every position holds an additive share of S


#: ``disc_objective`` -> factory taking ``reward_reduce`` (which only the token objective uses).
OBJECTIVES: dict[str, Callable[[Literal["mean", "sum"]], DiscriminatorObjective]] = {
    "token": TokenObjective,
    "sequence": lambda reward_reduce: SequenceObjective(),
}


def make_objective(kind: str, reward_reduce: Literal["mean", "sum"] = "mean") -> DiscriminatorObjective:
    """The objective a `DistillConfig` names (``disc_objective``, ``reward_reduce``)."""
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown discriminator objective {kind!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[kind](reward_reduce)
