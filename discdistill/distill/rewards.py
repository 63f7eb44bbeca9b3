"""Step 4 of a DiDi-Instruct iteration: the discriminator's reward for each student sample.

r_i = reduce over masked positions of clamp(logit, -c, c), taken after the discriminator's step, with
no gradient (the student learns from it through the policy gradient only). Options: K corruptions of
the sample averaged (``reward_corruptions``), and M times (``reward_times``): at M = 1 the reward is
read at the sample's own t, the first view being the z_fake the discriminator was trained on; at
M > 1 it is the integral over t, by the midpoint rule on ``reward_time_range`` with weights omega(t_m),
so the policy loss then weights every sample by 1. All views go through the discriminator in one
batched pass. `discriminator_reward_map` reads the same views per position instead ([N, L]), for the
per-token credit of ``credit = 'local'``. The corruptions are drawn from the run's generator (``corrupt_at``), in a fixed order,
so a resumed run draws the same ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from discdistill.diffusion import LogLinearSchedule
from discdistill.distill.config import DistillConfig
from discdistill.distill.losses import omega, quadrature_times
from discdistill.distill.objectives import DiscriminatorObjective

Corrupter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _reward_grid(config: DistillConfig, device: torch.device) -> torch.Tensor:
    """The M quadrature midpoints [M] (float64) on ``reward_time_range``, by default tau's support."""
    low, high = config.reward_time_range or (config.tau_min, config.tau_max)
    return quadrature_times(config.reward_times, low, high).to(device)


def _times_and_views(x_fake: torch.Tensor, z_fake: torch.Tensor, t: torch.Tensor, grid: torch.Tensor | None,
                     k: int, corrupt_at: Corrupter) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The times [N] scored and their K views each (time-major): at t, z_fake then K - 1 fresh views;
    on the grid, K fresh views at each time."""
    if grid is None:
        return [t], [z_fake] + [corrupt_at(x_fake, t) for _ in range(k - 1)]
    times = [grid[m].expand(x_fake.shape[0]) for m in range(len(grid))]
    return times, [corrupt_at(x_fake, tm) for tm in times for _ in range(k)]


@torch.no_grad()
def _scored_views(disc: nn.Module, x_fake: torch.Tensor, z_fake: torch.Tensor, t: torch.Tensor, *,
                  config: DistillConfig, schedule: LogLinearSchedule, device: torch.device,
                  corrupt_at: Corrupter) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(quadrature grid or None, the views [T K N, L] time-major, their logits [T K N, L]), one batched pass."""
    k = config.reward_corruptions
    disc.eval()
    grid = None if config.reward_times == 1 else _reward_grid(config, device)
    times, views = _times_and_views(x_fake, z_fake, t, grid, k, corrupt_at)
    z_views = torch.cat(views)
    sigma = torch.cat([schedule.sigma(tm.double()).float() for tm in times for _ in range(k)])
    return grid, z_views, disc(z_views, sigma)


def _integrate(values: torch.Tensor, grid: torch.Tensor | None, config: DistillConfig,
               schedule: LogLinearSchedule) -> torch.Tensor:
    """values [T, K, N, ...] -> [N, ...]: the mean over views, then over times (omega-weighted on the grid)."""
    if grid is None:
        return values.mean((0, 1))
    # the integral over t: quadrature weights omega(t_m) (uniform for omega = constant), normalised
    weight = omega(grid.float(), config.omega, config.omega_clamp, schedule)
    return torch.tensordot(weight / weight.sum(), values.mean(1), dims=1)


def discriminator_rewards(disc: nn.Module, objective: DiscriminatorObjective, x_fake: torch.Tensor,
                          z_fake: torch.Tensor, t: torch.Tensor, *, config: DistillConfig,
                          schedule: LogLinearSchedule, mask_id: int, device: torch.device,
                          corrupt_at: Corrupter) -> torch.Tensor:
    """r [N]: the mean over times and K corruptions of the reduced clamped log-odds (``disc`` in eval mode)."""
    grid, z_views, logits = _scored_views(disc, x_fake, z_fake, t, config=config, schedule=schedule, device=device,
                                          corrupt_at=corrupt_at)
    rewards = objective.reward(logits, z_views == mask_id, config.reward_clamp)
    return _integrate(rewards.reshape(-1, config.reward_corruptions, x_fake.shape[0]), grid, config, schedule)


def discriminator_reward_map(disc: nn.Module, objective: DiscriminatorObjective, x_fake: torch.Tensor,
                             z_fake: torch.Tensor, t: torch.Tensor, *, config: DistillConfig,
                             schedule: LogLinearSchedule, mask_id: int, device: torch.device,
                             corrupt_at: Corrupter) -> torch.Tensor:
    """r [N, L]: each position's clamped reward share, averaged over the same times and views as
    `discriminator_rewards` (``credit = 'local'``; the same draws from ``corrupt_at``)."""
    grid, z_views, logits = _scored_views(disc, x_fake, z_fake, t, config=config, schedule=schedule, device=device,
                                          corrupt_at=corrupt_at)
    rewards = objective.position_reward(logits, z_views == mask_id, config.reward_clamp)
    return _integrate(rewards.reshape(-1, config.reward_corruptions, *x_fake.shape), grid, config, schedule)
