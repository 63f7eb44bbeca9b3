"""The student's training rollout: two ancestral steps through an intermediate state (method.md §2.2).

    step 1: z_1 = all-mask  --(t = 1 -> tau)-->  z_tau     lp1 = sum_{j unmasked by step 1} log p_nu(x_j | z_1)
    step 2: z_tau           --(t = tau -> 0)-->  x_fake    lp2 = sum_{j unmasked by step 2} log p_nu(x_j | z_tau)
    log p_nu(x_fake) ~ lp1 + lp2

or, with ``steps = K`` (`grid_rollout`), the student's own K-step sampler: K ancestral steps on the
sampling grid linspace(1, t_min, K + 1) whose last step removes all noise, log p_nu = sum_k lp_k. That
draws x_fake from exactly the law `discdistill.sampling.sample(..., steps=K)` samples, so the policy
gradient optimises the sampler the student will be used with (the two-step rollout optimises a
2-step sampler and relies on it transferring to K steps).

Decisions:
* One forward pass *with* gradients per step; tokens are sampled from its detached output and the
  same output gives the step's log-prob (the reference code runs a second forward for the log-prob).
* Step 2 ends at alpha_s = 1 (the sampler's fused noise removal, `discdistill.sampling`): every
  position still masked at z_tau is filled from p_nu(x_0 | z_tau), and lp2 covers them all. The
  reference code steps to t = 1e-3 and then removes the remaining noise; in law that is the same
  draw (a token drawn from the same p(x_0 | z_tau) whether it is unmasked at 1e-3 or at 0), and
  fusing it gives every position a log-prob and a gradient.
* ``two_step=False`` (the ablation without decomposition): one step 1 -> 0 from the all-mask state,
  which draws every position independently from p_nu(x_0 | all-mask); there is no z_tau.
* Positions that stay masked contribute log P(stay) (a constant of nu) and are left out of lp.
* Only masked positions are scored (`DiT.logits_at`): the output layer, the SUBS log-softmax and the
  categorical draw run on the n masked rows of a step, not on all N x L positions (with V = 50k the
  output layer dominates, and at z_tau only about tau L positions are masked). Log-probabilities are
  therefore [n, V] rows in row-major order of the masked positions, which is also where KL matching
  and the entropy bonus average.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from discdistill.diffusion import NEG_INF, LogLinearSchedule
from discdistill.interfaces import MaskedDiffusionTeacher
from discdistill.sampling import Precision, alphas_and_sigmas, sample_bernoulli, sample_categorical, time_grid

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RolloutStep:
    state: torch.Tensor  # [N, L] ids the step started from
    t: torch.Tensor  # [N] float64 time of `state` (its sigma is the denoiser's input when time-conditioned)
    masked: torch.Tensor  # [N, L] bool: positions masked in `state`
    log_probs: torch.Tensor  # [n, V] SUBS log p_nu(x_0 | state) at the n masked positions (row-major), with grad
    unmasked: torch.Tensor  # [N, L] bool: positions the step unmasked
    log_prob: torch.Tensor  # [N] sum over `unmasked` of log p_nu(chosen token | state), with gradients
    next_state: torch.Tensor  # [N, L] ids after the step
    chosen: torch.Tensor  # [n] log p_nu(drawn token | state) at the masked positions, 0 where it stayed masked

    def position_log_prob(self) -> torch.Tensor:
        """[N, L]: log p_nu(chosen token | state) at the positions this step unmasked, 0 elsewhere (with grad)."""
        return torch.zeros(self.masked.shape, dtype=self.chosen.dtype,
                           device=self.chosen.device).masked_scatter(self.masked, self.chosen)


@dataclass
class Rollout:
    x_fake: torch.Tensor  # [N, L] clean student samples (detached ids)
    tau: torch.Tensor  # [N] the intermediate times (a grid rollout: only the discriminator's corruption time)
    steps: list[RolloutStep]  # one (two_step=False), two (through tau) or K entries (grid rollout)

    @property
    def z_tau(self) -> torch.Tensor | None:
        return self.steps[0].next_state if len(self.steps) == 2 else None

    @property
    def lp1(self) -> torch.Tensor:
        return self.steps[0].log_prob

    @property
    def lp2(self) -> torch.Tensor | None:
        return self.steps[1].log_prob if len(self.steps) == 2 else None

    @property
    def log_prob(self) -> torch.Tensor:
        """log p_nu(x_fake) ~ sum over steps of lp_k [N]."""
        return sum(step.log_prob for step in self.steps)  # type: ignore[return-value]

    def position_log_prob(self) -> torch.Tensor:
        """[N, L]: each position's log-prob at the step that unmasked it (rows sum to `log_prob`)."""
        return sum(step.position_log_prob() for step in self.steps)  # type: ignore[return-value]


def masked_log_probs(model: Denoise, z: torch.Tensor, sigma: torch.Tensor, masked: torch.Tensor,
                     mask_id: int) -> torch.Tensor:
    """SUBS log p(x_0 | z) at the masked positions only: [n, V] float32 (mask column -inf).

    Uses ``model.logits_at`` for a `MaskedDiffusionTeacher` (the DiT skips the other positions), else
    slices the full output of a plain callable.
    """
    logits = model.logits_at(z, sigma, masked) if isinstance(model, MaskedDiffusionTeacher) else model(z, sigma)[masked]
    mask_column = torch.tensor([mask_id], device=logits.device)
    return logits.float().index_fill(-1, mask_column, NEG_INF).log_softmax(-1)


def _as_rows(value: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64, device=device).reshape(-1).expand(n)


def rollout_step(model: Denoise, z: torch.Tensor, alpha_t: torch.Tensor | float, alpha_s: torch.Tensor | float,
                 sigma: torch.Tensor, mask_id: int, precision: Precision = "float64",
                 generator: torch.Generator | None = None, shared_rows: int = 1, *,
                 t: torch.Tensor | float) -> RolloutStep:
    """One ancestral step t -> s with a differentiable log-prob of the positions it unmasks.

    At a masked position: unmasked with probability (alpha_s - alpha_t) / (1 - alpha_t), then
    x ~ p_nu(x_0 | z). ``alpha_*`` are scalars or per row [N]. ``shared_rows`` = G > 1: blocks of G
    consecutive rows draw their unmasking uniforms together (common random numbers): rows of a block
    that start from the same mask pattern at the same times unmask the same positions. ``t``: the
    time of ``z`` (scalar or [N]), recorded in the step.
    """
    n = z.shape[0]
    alpha_t = _as_rows(alpha_t, n, z.device)
    alpha_s = _as_rows(alpha_s, n, z.device)
    masked = z == mask_id
    log_probs = masked_log_probs(model, z, sigma, masked, mask_id)  # [m, V], with grad
    rows = masked.nonzero()[:, 0]
    with torch.no_grad():
        if log_probs.shape[0]:
            tokens = sample_categorical(log_probs.detach().exp(), precision, generator)  # [m]
        else:  # nothing left to unmask anywhere in the batch
            tokens = torch.zeros(0, dtype=torch.long, device=z.device)
        unmask_prob = (alpha_s - alpha_t) / (1.0 - alpha_t)  # [N]
        if shared_rows > 1:
            dtype = torch.float64 if precision == "float64" else torch.float32
            u = torch.rand((n // shared_rows, z.shape[1]), dtype=dtype, device=z.device, generator=generator)
            unmasked = masked & (u.repeat_interleave(shared_rows, 0) < unmask_prob.to(dtype)[:, None])
            chosen_mask = unmasked[masked]  # [m]
        else:
            chosen_mask = sample_bernoulli(unmask_prob[rows], precision, generator)  # [m]
            unmasked = torch.zeros_like(masked)
            unmasked[masked] = chosen_mask
        next_state = z.clone()
        next_state[unmasked] = tokens[chosen_mask]
    chosen = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    chosen = torch.where(chosen_mask, chosen, torch.zeros_like(chosen))
    log_prob = torch.zeros(n, dtype=chosen.dtype, device=z.device).index_add(0, rows, chosen)
    return RolloutStep(state=z, t=_as_rows(t, n, z.device), masked=masked, log_probs=log_probs, unmasked=unmasked,
                       log_prob=log_prob, next_state=next_state, chosen=chosen)


def sample_tau(n: int, a: float, b: float, low: float, high: float, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """tau ~ Beta(a, b) clamped to [low, high], [n] float32 (drawn on the CPU generator for reproducibility)."""
    if a == 1.0 and b == 1.0:
        u = torch.rand(n, dtype=torch.float64, generator=generator, device=generator.device if generator else "cpu")
    else:  # Beta via two Gammas with the generator (torch.distributions.Beta takes no generator)
        shape_a = torch.full((n,), float(a), dtype=torch.float64, device=generator.device if generator else "cpu")
        shape_b = torch.full((n,), float(b), dtype=torch.float64, device=shape_a.device)
        ga = torch._standard_gamma(shape_a, generator=generator)
        gb = torch._standard_gamma(shape_b, generator=generator)
        u = ga / (ga + gb)
    return u.clamp(low, high).float().to(device)


def student_rollout(model: Denoise, tau: torch.Tensor, *, seq_len: int, mask_id: int,
                    schedule: LogLinearSchedule = LogLinearSchedule(), two_step: bool = True,
                    time_conditioned: bool = False, precision: Precision = "float64",
                    generator: torch.Generator | None = None, shared_rows: int = 1) -> Rollout:
    """Roll ``tau.numel()`` samples out of ``model`` from the all-mask state (see the module docstring).

    Every random draw uses ``generator``; pass one on ``tau``'s device. ``shared_rows`` = G: blocks of
    G rows (with equal tau) unmask the same positions at both steps and differ only in their tokens.
    """
    n, device = tau.shape[0], tau.device
    tau64 = tau.double()
    z1 = torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    alpha_1 = schedule.alpha(torch.ones(n, dtype=torch.float64, device=device))
    one = torch.ones(n, dtype=torch.float64, device=device)

    def sigma_at(t: torch.Tensor) -> torch.Tensor:
        return schedule.sigma(t).float() if time_conditioned else torch.zeros(n, device=device)

    if not two_step:
        step = rollout_step(model, z1, alpha_1, one, sigma_at(one), mask_id, precision, generator, shared_rows, t=one)
        return Rollout(x_fake=step.next_state, tau=tau, steps=[step])
    alpha_tau = schedule.alpha(tau64)
    first = rollout_step(model, z1, alpha_1, alpha_tau, sigma_at(one), mask_id, precision, generator, shared_rows,
                         t=one)
    second = rollout_step(model, first.next_state, alpha_tau, one, sigma_at(tau64), mask_id, precision, generator,
                          shared_rows, t=tau64)
    return Rollout(x_fake=second.next_state, tau=tau, steps=[first, second])


def grid_rollout(model: Denoise, tau: torch.Tensor, *, steps: int, seq_len: int, mask_id: int,
                 schedule: LogLinearSchedule = LogLinearSchedule(), time_conditioned: bool = False,
                 t_min: float = 1e-5, precision: Precision = "float64", generator: torch.Generator | None = None,
                 shared_rows: int = 1) -> Rollout:
    """``steps`` ancestral steps of ``model`` on the sampler's grid, each with a differentiable log-prob.

    The same law as ``sample(model, steps=steps, t_min=t_min)`` (grid linspace(1, t_min, K + 1), last
    alpha = 1): x_fake is a draw of the K-step sampler the student is evaluated with. ``tau`` is carried
    for the discriminator's corruption time only.
    """
    assert steps >= 1
    n, device = tau.shape[0], tau.device
    times = time_grid(steps, t_min, device)
    alphas, sigmas = alphas_and_sigmas(steps, t_min, schedule, device)  # the sampler's own, last alpha = 1
    zero_sigma = torch.zeros(n, device=device)
    z = torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    taken = []
    for k in range(steps):
        sigma = sigmas[k].expand(n) if time_conditioned else zero_sigma
        taken.append(rollout_step(model, z, alphas[k], alphas[k + 1], sigma, mask_id, precision, generator,
                                  shared_rows, t=times[k].expand(n)))
        z = taken[-1].next_state
    return Rollout(x_fake=z, tau=tau, steps=taken)
