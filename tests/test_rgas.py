"""Reward-guided ancestral sampling: valid samples, pass counts, the reward's effect, determinism, loading."""

from __future__ import annotations

import pytest
import torch

from discdistill.distill.config import RGASConfig
from discdistill.distill.discriminator import DiTDiscriminator, save_discriminator
from discdistill.distill.rgas import RGAS, load_rgas
from discdistill.errors import CheckpointError
from discdistill.models import DiT
from discdistill.sampling import sample
from tests.conftest import small_dit

V, L, MASK = 6, 8, 5


def tiny_dit(seed: int = 0) -> DiT:
    return small_dit(V, MASK, L, seed=seed, blocks=1, structured=False)


class LikesTokenZero(torch.nn.Module):
    """Stand-in discriminator: the logit of a position is 3 x P(token 0) there (ids or soft input)."""

    def forward(self, z, sigma):
        probs = torch.nn.functional.one_hot(z, V).float() if z.dim() == 2 else z
        return 3.0 * probs[..., 0]


def uniform_denoiser(z, sigma):
    return torch.zeros(*z.shape[:2], V)


def test_rgas_samples_are_valid_and_passes_are_counted():
    rule = RGAS(LikesTokenZero(), RGASConfig(candidates=4, rerank_ratio=0.5))
    out = sample(uniform_denoiser, num_samples=16, seq_len=L, steps=4, mask_id=MASK, step_rule=rule,
                 generator=torch.Generator().manual_seed(0))
    assert out.ids.shape == (16, L) and out.nfe == 4
    assert not bool((out.ids == MASK).any()) and int(out.ids.min()) >= 0
    # 2 tilting steps (1 forward + 1 backward each), 2 re-ranking steps (M = 4 forwards each)
    assert (rule.disc_forwards, rule.disc_backwards, rule.disc_passes) == (2 + 8, 2, 12)
    rule.reset_counts()
    sample(uniform_denoiser, num_samples=2, seq_len=L, steps=8, mask_id=MASK, step_rule=rule)
    assert (rule.disc_forwards, rule.disc_backwards) == (4 + 16, 4)
    assert rule.tilting_steps(1) == 0 and rule.tilting_steps(3) == 1


def test_a_zero_tilt_is_the_ancestral_step_and_costs_no_discriminator_pass():
    def draw(rule=None):
        kwargs = {} if rule is None else {"step_rule": rule}
        return sample(uniform_denoiser, num_samples=16, seq_len=L, steps=4, mask_id=MASK,
                      generator=torch.Generator().manual_seed(3), **kwargs).ids

    untilted = RGAS(LikesTokenZero(), RGASConfig(rerank_ratio=0.0, h_start=0.0, h_end=0.0))
    assert torch.equal(draw(untilted), draw()) and untilted.disc_passes == 0
    # re-ranking only: the 2 tilting steps of h = 0 are free, the 2 re-ranking steps cost M = 3 forwards each
    rerank_only = RGAS(LikesTokenZero(), RGASConfig(rerank_ratio=0.5, candidates=3, h_start=0.0, h_end=0.0))
    draw(rerank_only)
    assert (rerank_only.disc_forwards, rerank_only.disc_backwards) == (6, 0)
    # a tilt that only passes through zero (h = 0 -> 10 over 3 steps) pays at the other two
    ramp = RGAS(LikesTokenZero(), RGASConfig(rerank_ratio=0.25, h_start=0.0, h_end=10.0, candidates=1))
    draw(ramp)
    assert (ramp.disc_forwards, ramp.disc_backwards) == (2, 2)


@pytest.mark.parametrize("mode", ["tilt", "rerank", "both"])
def test_a_reward_for_one_token_raises_its_frequency(mode):
    ratio = {"tilt": 0.0, "rerank": 1.0, "both": 0.5}[mode]
    rule = RGAS(LikesTokenZero(), RGASConfig(rerank_ratio=ratio, candidates=4))
    kwargs = dict(num_samples=64, seq_len=L, steps=4, mask_id=MASK, generator=torch.Generator().manual_seed(1))
    plain = sample(uniform_denoiser, **kwargs).ids
    kwargs["generator"] = torch.Generator().manual_seed(1)
    guided = sample(uniform_denoiser, step_rule=rule, **kwargs).ids
    base, boosted = float((plain == 0).float().mean()), float((guided == 0).float().mean())
    assert base == pytest.approx(1 / (V - 1), abs=0.05)
    assert boosted > base + 0.1


def test_tilt_gradient_is_zero_at_unmasked_positions_and_clamped():
    rule = RGAS(LikesTokenZero(), RGASConfig(grad_clip=0.01))
    from discdistill.sampling import StepContext

    z = torch.tensor([[0, MASK, 2, MASK]])
    logits = torch.zeros(1, 4, V)
    ctx = StepContext(denoise=uniform_denoiser, mask_id=MASK, alpha_t=torch.tensor(0.5, dtype=torch.float64),
                      alpha_s=torch.tensor(0.75, dtype=torch.float64), sigma_s=torch.tensor(0.3), index=0,
                      num_steps=2, precision="float64", noise_removal="sample", generator=None)
    tilted = rule.tilt(z, logits, ctx, h=10.0)
    assert torch.equal(tilted[0, 0], logits[0, 0]) and torch.equal(tilted[0, 2], logits[0, 2])
    shift = tilted[0, 1]
    # d/dl_0 of 3 softmax(l)_0 at uniform l over 5 tokens = 3 p (1 - p) = 0.48 > 0.01 -> clamped to 0.01, x h = 0.1
    assert float(shift[0]) == pytest.approx(0.1)
    assert all(float(shift[v]) == pytest.approx(-0.1) for v in range(1, MASK))


def test_rgas_uses_only_the_context_generator_and_a_real_discriminator(tmp_path):
    disc = DiTDiscriminator(tiny_dit(), trainable_blocks=1)
    save_discriminator(disc, tmp_path / "run" / "discriminator")
    (tmp_path / "run" / "student").mkdir()
    student = tiny_dit(1)
    draws = []
    for where in ("run", "run/student", "run/discriminator"):
        rule = load_rgas(tmp_path / where)
        torch.manual_seed(len(draws))  # the global RNG must not matter
        draws.append(sample(student, num_samples=4, seq_len=L, steps=4, mask_id=MASK, step_rule=rule,
                            generator=torch.Generator().manual_seed(7)).ids)
        assert not bool((draws[-1] == MASK).any())
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[1], draws[2])
    with pytest.raises(CheckpointError):
        load_rgas(tmp_path / "nowhere")


class SoftInputOnly(torch.nn.Module):
    """The same discriminator seen only through forward(z, sigma): RGAS must take the generic soft-input path."""

    def __init__(self, disc):
        super().__init__()
        self.disc = disc

    def forward(self, z, sigma):
        return self.disc(z, sigma)


@pytest.mark.parametrize("vocab", [V, 300])
def test_the_embedding_space_tilt_equals_the_soft_input_tilt(vocab):
    from discdistill.sampling import StepContext

    disc = DiTDiscriminator(small_dit(vocab, vocab - 1, L, seed=1, blocks=2), trainable_blocks=1).eval()
    generator = torch.Generator().manual_seed(0)
    z = torch.randint(0, vocab - 1, (3, L), generator=generator)
    z[torch.rand(3, L, generator=generator) < 0.6] = vocab - 1
    logits = 3 * torch.randn(3, L, vocab, generator=generator)
    ctx = StepContext(denoise=uniform_denoiser, mask_id=vocab - 1, alpha_t=torch.tensor(0.4, dtype=torch.float64),
                      alpha_s=torch.tensor(0.7, dtype=torch.float64), sigma_s=torch.tensor(0.3), index=0,
                      num_steps=8, precision="float64", noise_removal="sample", generator=None)
    config = RGASConfig(grad_clip=1e9)  # compare the raw gradients, not their clamp
    fast = RGAS(disc, config).tilt(z, logits, ctx, h=1.0)
    reference = RGAS(SoftInputOnly(disc), config).tilt(z, logits, ctx, h=1.0)
    assert not torch.equal(fast, logits)  # the tilt moved something
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
