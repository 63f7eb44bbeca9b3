"""The diffusion math against hand computation."""

import math

import pytest
import torch

from discdistill.diffusion import (
    LogLinearSchedule, antithetic_times, corrupt, masked_log_probs, mdlm_loss, posterior_probs, subs_log_probs,
)

MASK = 4  # V = 5: tokens 0..3 and the mask


def test_schedule_endpoints_and_weight():
    schedule = LogLinearSchedule(eps=1e-3)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert schedule.alpha(t).tolist() == pytest.approx([1.0, 1 - 0.999 * 0.5, 1e-3])
    assert schedule.sigma(t).tolist() == pytest.approx([0.0, -math.log(1 - 0.4995), -math.log(1e-3)])
    # -alpha' / (1 - alpha) = (1 - eps) / ((1 - eps) t) = 1 / t
    assert schedule.loss_weight(torch.tensor([0.5, 0.25])).tolist() == pytest.approx([2.0, 4.0])


def test_corrupt_keeps_with_probability_alpha():
    x = torch.randint(0, MASK, (400, 500), generator=torch.Generator().manual_seed(0))
    alpha = torch.full((400,), 0.3)
    z = corrupt(x, alpha, MASK, torch.Generator().manual_seed(1))
    kept = (z != MASK)
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert torch.equal(z[kept], x[kept])
    assert (corrupt(x, torch.ones(400), MASK) == x).all()
    assert (corrupt(x, torch.zeros(400), MASK) == MASK).all()


def test_subs_zero_mask_probability_and_carry_over():
    logits = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 9.0], [0.0, 0.0, 0.0, 0.0, 9.0]]])
    z = torch.tensor([[MASK, 2]])
    probs = subs_log_probs(logits, z, MASK).exp()
    expected = torch.softmax(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0)
    assert torch.allclose(probs[0, 0, :4], expected) and probs[0, 0, MASK] == 0
    assert probs[0, 1].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert logits[0, 0, MASK] == 9.0, "the caller's logits must not be modified"


def test_masked_log_probs_is_subs_at_a_masked_position():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0], [0.5, -1.0, 0.0, 2.0, 9.0]])
    log_p = masked_log_probs(logits, MASK)
    expected = torch.log_softmax(logits[:, :4], -1)  # the mask logit removed, whatever its value
    assert torch.allclose(log_p[:, :4], expected) and (log_p[:, MASK] == float("-inf")).all()
    # bit-identical to the SUBS distribution where z is the mask (the samplers rely on it)
    assert torch.equal(log_p, subs_log_probs(logits[None], torch.full((1, 2), MASK), MASK)[0])
    assert logits[0, MASK] == 9.0, "the caller's logits must not be modified"


def test_posterior_by_hand():
    # p(x0) = [0.5, 0.3, 0.2, 0], alpha_t = 0.4, alpha_s = 0.7:
    # unmask factor (0.7 - 0.4)/(1 - 0.4) = 0.5, P(stay m) = (1 - 0.7)/(1 - 0.4) = 0.5
    log_p = torch.tensor([[[0.5, 0.3, 0.2, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64).log()
    z = torch.tensor([[MASK, 1]])
    q = posterior_probs(log_p, z, torch.tensor(0.4), torch.tensor(0.7), MASK)
    assert q[0, 0].tolist() == pytest.approx([0.25, 0.15, 0.10, 0.0, 0.5])
    assert q[0, 1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    schedule = LogLinearSchedule()
    t, s = torch.tensor(0.8), torch.tensor(0.3)
    stay = posterior_probs(log_p, z, schedule.alpha(t), schedule.alpha(s), MASK)[0, 0, MASK]
    assert stay.item() == pytest.approx(((1 - schedule.alpha(s)) / (1 - schedule.alpha(t))).item())
    assert stay.item() == pytest.approx(0.3 / 0.8)  # log-linear: (1 - alpha_s)/(1 - alpha_t) = s/t


def test_elbo_of_an_oracle_is_zero_and_uniform_is_log_v():
    schedule = LogLinearSchedule()
    x = torch.randint(0, MASK, (8, 16), generator=torch.Generator().manual_seed(0))
    t = antithetic_times(8, generator=torch.Generator().manual_seed(0), t_min=1e-3)
    z = corrupt(x, schedule.alpha(t), MASK, torch.Generator().manual_seed(2))
    oracle = torch.nn.functional.one_hot(x, 5).float() * 100.0
    assert mdlm_loss(oracle, x, z, t, schedule, MASK).item() < 1e-6
    # uniform over the 4 real tokens: each masked position costs log 4, weighted by 1/t
    uniform = torch.zeros(8, 16, 5)
    expected = ((z == MASK).sum(1) * math.log(4) / t).sum() / (8 * 16)
    assert mdlm_loss(uniform, x, z, t, schedule, MASK).item() == pytest.approx(expected.item(), rel=1e-5)


def test_antithetic_times_are_stratified():
    t = antithetic_times(8, generator=torch.Generator().manual_seed(3)).sort().values
    gaps = t[1:] - t[:-1]
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)
    assert ((t > 0) & (t <= 1)).all()


def test_loss_at_masked_positions_equals_full_loss():
    from discdistill.config import model_config_from_preset
    from discdistill.diffusion import mdlm_loss_at_masked
    from discdistill.models import DiT

    torch.manual_seed(0)
    model = DiT(model_config_from_preset("tiny", vocab_size=5, mask_id=MASK, seq_len=12)).eval()
    for p in model.parameters():  # leave the zero init so logits are not trivially uniform
        torch.nn.init.normal_(p, std=0.1)
    schedule = LogLinearSchedule()
    x = torch.randint(0, MASK, (3, 12))
    t = torch.tensor([0.2, 0.5, 0.9])
    z = corrupt(x, schedule.alpha(t), MASK, torch.Generator().manual_seed(0))
    masked = z == MASK
    full = mdlm_loss(model(z, torch.zeros(3)), x, z, t, schedule, MASK)
    fast = mdlm_loss_at_masked(model.logits_at(z, torch.zeros(3), masked), x, masked, t, schedule, MASK)
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)
