"""Reward-guided ancestral sampling (RGAS, method.md §3): a step rule for `discdistill.sampling.sample`.

    rule = load_rgas("runs/distill")            # the run's discriminator
    ids = sample(student, ..., steps=8, step_rule=rule).ids
    rule.disc_forwards, rule.disc_backwards      # what RGAS added to the N denoiser passes

With N steps, steps i < int(N (1 - rerank_ratio)) tilt and the others re-rank (the reference code's
split: with N = 8 and ratio 0.5, four of each; with N = 1, re-ranking only).

* Gradient tilting: l = student logits at z_t. Soft input to the discriminator = SUBS probabilities
  (softmax(l) without the mask at masked positions, one-hot at unmasked ones); reward = sum over masked
  positions of its logits at sigma_t; g = d reward / d l (zero at unmasked positions), clamped to
  [-1, 1]; l' = l + h g with h linear from h_start to h_end over the tilting steps; then an ordinary
  ancestral step from l'. One discriminator forward and backward per tilting step, none where h = 0
  (h_start = h_end = 0 makes RGAS re-ranking only, at M forwards per re-ranking step).
* Re-ranking: M candidate next states from the ancestral kernel, scored by the discriminator at
  sigma_s, one drawn from softmax(score / temperature). M discriminator forwards per step (batched).
  **Decision** (score): the sum of the logits over all positions (``score="all"``, the reference
  code's choice). The discriminator is trained on masked positions only, but the last step leaves no
  masked position, so a masked-only score (``score="masked"``, mean over positions still masked) is
  uniform there; the benchmark compares both.

All randomness goes through ``ctx.generator``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from discdistill.diffusion import subs_log_probs
from discdistill.distill.config import RGASConfig
from discdistill.distill.discriminator import DISC_CONFIG, load_discriminator
from discdistill.errors import CheckpointError
from discdistill.interfaces import Discriminator, EmbeddingDiscriminator
from discdistill.sampling import StepContext, ancestral_step, sample_categorical


class RGAS:
    """Step rule: gradient tilting for the first steps, candidate re-ranking for the rest."""

    def __init__(self, discriminator: Discriminator, config: RGASConfig | None = None) -> None:
        self.disc = discriminator.eval()
        self.config = config or RGASConfig()
        self.reset_counts()

    def reset_counts(self) -> None:
        self.disc_forwards = 0
        self.disc_backwards = 0

    @property
    def disc_passes(self) -> int:
        """Discriminator passes added to the denoiser's NFE (a forward and a backward count one each)."""
        return self.disc_forwards + self.disc_backwards

    def tilting_steps(self, num_steps: int) -> int:
        return int(num_steps * (1.0 - self.config.rerank_ratio))

    def __call__(self, z: torch.Tensor, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        n_tilt = self.tilting_steps(ctx.num_steps)
        if ctx.index < n_tilt:
            progress = ctx.index / max(1, n_tilt - 1)
            h = self.config.h_start + (self.config.h_end - self.config.h_start) * progress
            if h == 0.0:  # no tilt is the ancestral step: the discriminator pass would be wasted
                return ancestral_step(z, logits, ctx)
            return ancestral_step(z, self.tilt(z, logits, ctx, h), ctx)
        return self.rerank(z, logits, ctx)

    def tilt(self, z: torch.Tensor, logits: torch.Tensor, ctx: StepContext, h: float) -> torch.Tensor:
        """l' = l + h clamp(d/dl sum_{masked} D(soft(l), sigma_t), -c, c), zero at unmasked positions."""
        masked = z == ctx.mask_id
        sigma_t = (-torch.log(ctx.alpha_t)).float().expand(z.shape[0])
        if isinstance(self.disc, EmbeddingDiscriminator):
            grad = self._reward_gradient_in_embedding_space(z, logits, masked, sigma_t, ctx.mask_id)
        else:
            grad = self._reward_gradient_through_soft_input(z, logits, masked, sigma_t, ctx.mask_id)
        self.disc_forwards += 1
        self.disc_backwards += 1
        grad.masked_fill_(~masked.unsqueeze(-1), 0.0).clamp_(-self.config.grad_clip, self.config.grad_clip)
        return grad.mul_(h).add_(logits.float())

    def _reward_gradient_through_soft_input(self, z: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor,
                                            sigma_t: torch.Tensor, mask_id: int) -> torch.Tensor:
        """Any discriminator: autograd through the [B, L, V] soft input (SUBS probabilities)."""
        with torch.enable_grad():
            leaf = logits.detach().float().requires_grad_(True)
            soft = subs_log_probs(leaf, z, mask_id).exp()  # softmax at masked, one-hot at unmasked
            scores = self.disc(soft, sigma_t)
            reward = torch.where(masked, scores, torch.zeros_like(scores)).sum()
            (grad,) = torch.autograd.grad(reward, leaf)
        return grad

    def _reward_gradient_in_embedding_space(self, z: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor,
                                            sigma_t: torch.Tensor, mask_id: int) -> torch.Tensor:
        """The same gradient at masked positions, with autograd only from the input embedding x on.

        At a masked position x = p @ E with p = softmax(l) (mask logit -inf, as SUBS); so with
        u = (dR/dx) @ E^T the chain rule through the softmax gives dR/dl = p * (u - <p, u>). Unmasked
        positions get E[z] (a one-hot's embedding) and no gradient. Two [B, L, V] x [V, hidden] matmuls
        and a few in-place passes replace autograd's chain of [B, L, V] intermediates.
        """
        embedding = self.disc.input_embedding.detach().float()
        with torch.no_grad():
            l = logits.detach().to(torch.float32, copy=True)  # a copy: the caller's logits stay intact
            l[..., mask_id] = float("-inf")  # a Python index: no host-to-device tensor in the sampling loop
            p = torch.softmax(l, dim=-1)
            x = torch.where(masked.unsqueeze(-1), p @ embedding, embedding[z])
        with torch.enable_grad():
            x = x.requires_grad_(True)
            scores = self.disc.forward_embedded(x, sigma_t)
            reward = torch.where(masked, scores, torch.zeros_like(scores)).sum()
            (grad_x,) = torch.autograd.grad(reward, x)
        with torch.no_grad():
            u = grad_x.float() @ embedding.T  # [B, L, V]
            inner = (u * p).sum(-1, keepdim=True)
            return u.sub_(inner).mul_(p)

    @torch.no_grad()
    def rerank(self, z: torch.Tensor, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Draw M candidates z_s, score them with the discriminator at sigma_s, pick one per row."""
        m, (b, length) = self.config.candidates, z.shape
        if m == 1:
            return ancestral_step(z, logits, ctx)
        candidates = torch.stack([ancestral_step(z, logits, ctx) for _ in range(m)], dim=1)  # [B, M, L]
        flat = candidates.reshape(b * m, length)
        scores = self.disc(flat, ctx.sigma_s.float().expand(b * m)).reshape(b, m, length).float()
        self.disc_forwards += m
        if self.config.score == "all":
            score = scores.sum(-1)
        else:
            still = (candidates == ctx.mask_id).float()
            score = (scores * still).sum(-1) / still.sum(-1).clamp_min(1.0)
        probs = torch.softmax(score / self.config.temperature, dim=-1)
        choice = sample_categorical(probs, ctx.precision, ctx.generator)  # [B]
        return candidates.gather(1, choice.reshape(b, 1, 1).expand(b, 1, length)).squeeze(1)


def load_rgas(student_dir_or_run_dir: str | Path, config: RGASConfig | None = None,
              map_location: str | torch.device = "cpu") -> RGAS:
    """RGAS with the discriminator of a distillation run.

    Accepts the run directory (OUT), its ``student/`` directory (the discriminator is its sibling), or
    the ``discriminator/`` directory itself.
    """
    path = Path(student_dir_or_run_dir)
    for candidate in (path, path / "discriminator", path.parent / "discriminator"):
        if (candidate / DISC_CONFIG).is_file():
            disc = load_discriminator(candidate, map_location)
            return RGAS(disc, config)
    raise CheckpointError(f"no discriminator found for {path}: RGAS needs the discriminator/ folder that "
                          "`discdistill distill` writes beside student/; give the run directory")
