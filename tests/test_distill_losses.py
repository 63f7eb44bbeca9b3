"""DiDi-Instruct losses checked against hand computation (method.md §2.3-§2.5)."""

from __future__ import annotations

import math

import pytest
import torch

from discdistill.diffusion import LogLinearSchedule, subs_log_probs
from discdistill.distill.config import DistillConfig, ablation_ladder
from discdistill.distill.losses import (
    advantages,
    beta_density,
    discriminator_accuracy,
    discriminator_loss,
    group_advantages,
    kl_terms,
    local_advantages,
    local_policy_loss,
    masked_entropy,
    omega,
    quadrature_times,
    sequence_discriminator_accuracy,
    sequence_discriminator_loss,
    sequence_log_odds_reward,
    student_policy_loss,
    token_log_odds_reward,
    window_sum,
)
from discdistill.distill.objectives import SequenceObjective, TokenObjective, make_objective
from discdistill.errors import ConfigError


def test_group_advantages_hand_numbers():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    adv = group_advantages(rewards, group_size=4)
    # group 1: mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14/3)
    std = math.sqrt(14 / 3)
    expected = torch.tensor([-2 / std, -1 / std, 0.0, 3 / std])
    assert torch.allclose(adv[:4], expected, atol=1e-6)
    # group 2: constant rewards -> zero advantage (eps keeps it finite)
    assert torch.equal(adv[4:], torch.zeros(4))


def test_group_advantages_clip():
    # one outlier in a big group: (r - mean) / std = (n - 1) / sqrt(n) = 3.87 for n = 16 -> clipped to 3
    rewards = torch.zeros(16)
    rewards[0] = 1.0
    adv = group_advantages(rewards, group_size=16, clip=3.0)
    assert adv[0] == pytest.approx(3.0)
    mean, std = 1 / 16, math.sqrt((15 / 16) ** 2 / 15 + 15 * (1 / 16) ** 2 / 15)
    assert adv[1] == pytest.approx(-mean / std, rel=1e-5)
    unclipped = group_advantages(rewards, group_size=16, clip=100.0)
    assert unclipped[0] == pytest.approx(15 / 16 / std, rel=1e-5)


def test_advantage_modes():
    rewards = torch.tensor([0.0, 1.0, 10.0, 12.0])
    assert torch.equal(advantages(rewards, "none", 2), rewards)
    batch = advantages(rewards, "batch", 2)
    assert torch.allclose(batch, (rewards - rewards.mean()) / rewards.std(), atol=1e-6)
    group = advantages(rewards, "group", 2)
    s = math.sqrt(0.5)  # unbiased std of {0, 1} and of {10, 12} / 2
    assert torch.allclose(group, torch.tensor([-0.5 / s, 0.5 / s, -1 / (2 * s), 1 / (2 * s)]), atol=1e-5)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 4)


def test_omega_is_one_over_tau_clamped():
    tau = torch.tensor([0.01, 0.05, 0.2, 0.5, 0.99])
    w = omega(tau, "simplified", (0.1, 10.0), LogLinearSchedule(1e-3))
    # -alpha'/(1 - alpha) = (1 - eps) / ((1 - eps) tau) = 1 / tau
    assert torch.allclose(w, torch.tensor([10.0, 20.0, 5.0, 2.0, 1 / 0.99]).clamp(0.1, 10.0), rtol=1e-5)
    assert torch.allclose(omega(tau, "simplified", (2.0, 4.0)), torch.tensor([4.0, 4.0, 4.0, 2.0, 2.0]))
    assert torch.equal(omega(tau, "constant"), torch.ones(5))


def test_beta_density():
    tau = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(beta_density(tau, 1.0, 1.0), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(beta_density(tau, 2.0, 2.0), 6 * tau * (1 - tau))


def test_discriminator_loss_and_accuracy_by_hand():
    logits_real = torch.tensor([[2.0, -1.0, 5.0]])
    logits_fake = torch.tensor([[-3.0, 0.5, 7.0]])
    mask_real = torch.tensor([[True, True, False]])
    mask_fake = torch.tensor([[True, True, False]])

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    real = (bce(2.0, 0.9) + bce(-1.0, 0.9)) / 2
    fake = (bce(-3.0, 0.1) + bce(0.5, 0.1)) / 2
    loss = discriminator_loss(logits_real, logits_fake, mask_real, mask_fake, smoothing=0.1)
    assert float(loss) == pytest.approx((real + fake) / 2, rel=1e-6)
    acc_real, acc_fake = discriminator_accuracy(logits_real, logits_fake, mask_real, mask_fake)
    assert float(acc_real) == 0.5 and float(acc_fake) == 0.5
    # no masked position: the term is 0, not NaN
    none = torch.zeros_like(mask_real)
    assert float(discriminator_loss(logits_real, logits_fake, none, none)) == 0.0


def test_token_log_odds_reward():
    logits = torch.tensor([[1.0, 20.0, -3.0], [4.0, 4.0, 4.0]])
    masked = torch.tensor([[True, True, False], [False, False, False]])
    r = token_log_odds_reward(logits, masked, clamp=8.0)
    assert r.dtype == torch.float32
    assert torch.allclose(r, torch.tensor([(1.0 + 8.0) / 2, 0.0]))
    total = token_log_odds_reward(logits, masked, clamp=8.0, reduce="sum")
    assert torch.allclose(total, torch.tensor([1.0 + 8.0, 0.0]))  # clamp(20) = 8, the unmasked -3 left out
    with pytest.raises(ValueError):
        token_log_odds_reward(logits, masked, reduce="max")


def test_sequence_objective_by_hand():
    """One BCE example per row on the summed logits, whatever is masked; reward = the clamped sum."""
    logits_real = torch.tensor([[2.0, -1.0, 0.5], [0.2, 0.2, 0.2]])
    logits_fake = torch.tensor([[-3.0, 0.5, 1.0], [1.0, 1.0, 1.0]])

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    real = (bce(1.5, 0.9) + bce(0.6, 0.9)) / 2
    fake = (bce(-1.5, 0.1) + bce(3.0, 0.1)) / 2
    loss = sequence_discriminator_loss(logits_real, logits_fake, smoothing=0.1)
    assert float(loss) == pytest.approx((real + fake) / 2, rel=1e-6)
    acc_real, acc_fake = sequence_discriminator_accuracy(logits_real, logits_fake)
    assert float(acc_real) == 1.0 and float(acc_fake) == 0.5
    r = sequence_log_odds_reward(torch.tensor([[1.0, 2.0, -0.5], [9.0, 9.0, 9.0]]), clamp=8.0)
    assert r.dtype == torch.float32
    assert torch.allclose(r, torch.tensor([2.5, 24.0]))  # the second row's 27 is clamped to 8 * L = 24
    # the objective classes route to these functions and ignore the masks
    objective = make_objective("sequence")
    masks = torch.zeros(2, 3, dtype=torch.bool)
    assert float(objective.loss(logits_real, logits_fake, masks, masks, 0.1)) == pytest.approx(float(loss))
    assert isinstance(make_objective("token", "sum"), TokenObjective)
    with pytest.raises(ValueError, match="unknown discriminator objective 'ratio'"):
        make_objective("ratio")
    token = make_objective("token", "sum").reward(logits_real, torch.ones(2, 3, dtype=torch.bool), 8.0)
    assert torch.allclose(token, torch.tensor([1.5, 0.6]))


def test_quadrature_times_are_midpoints():
    assert torch.allclose(quadrature_times(4, 0.0, 1.0), torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64))
    assert torch.allclose(quadrature_times(1, 0.2, 0.8), torch.tensor([0.5], dtype=torch.float64))


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    z = torch.full(logits.shape[:-1], logits.shape[-1] - 1, dtype=torch.long)  # all masked
    return subs_log_probs(logits, z, logits.shape[-1] - 1)


def test_kl_variants_against_direct_computation():
    torch.manual_seed(0)
    student, teacher = _log_probs(torch.randn(2, 3, 5)), _log_probs(torch.randn(2, 3, 5))
    masked = torch.tensor([[True, False, True], [True, True, False]])
    p_s, p_t = student.exp()[..., :4], teacher.exp()[..., :4]  # mask column has probability 0
    fwd, rev = [], []
    for b in range(2):
        for j in range(3):
            if masked[b, j]:
                fwd.append(sum(float(p_t[b, j, v]) * math.log(p_t[b, j, v] / p_s[b, j, v]) for v in range(4)))
                rev.append(sum(float(p_s[b, j, v]) * math.log(p_s[b, j, v] / p_t[b, j, v]) for v in range(4)))
    f, r = sum(fwd) / len(fwd), sum(rev) / len(rev)
    assert float(kl_terms(student, teacher, masked, "forward").value) == pytest.approx(f, rel=1e-5)
    assert float(kl_terms(student, teacher, masked, "reverse").value) == pytest.approx(r, rel=1e-5)
    terms = kl_terms(student, teacher, masked, "jeffrey", beta=0.25)
    assert float(terms.value) == pytest.approx(0.75 * f + 0.25 * r, rel=1e-5)
    assert float(terms.forward) == pytest.approx(f, rel=1e-5) and float(terms.reverse) == pytest.approx(r, rel=1e-5)


def test_kl_gradients_are_finite_with_the_mask_column():
    logits = torch.randn(1, 4, 6, requires_grad=True)
    teacher = _log_probs(torch.randn(1, 4, 6))
    masked = torch.ones(1, 4, dtype=torch.bool)
    for kind in ("forward", "reverse", "jeffrey"):
        logits.grad = None
        kl_terms(_log_probs(logits), teacher, masked, kind).value.backward()
        assert torch.isfinite(logits.grad).all()
    # identical distributions: zero divergence
    same = _log_probs(torch.randn(1, 4, 6))
    assert float(kl_terms(same, same, masked, "jeffrey").value) == pytest.approx(0.0, abs=1e-6)


def test_masked_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0, 1.0], [0.25, 0.25, 0.5, 1.0]]]))  # last column is the mask
    log_p = _log_probs(logits)
    h1, h2 = math.log(2), -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert float(masked_entropy(log_p, torch.tensor([[True, True]]))) == pytest.approx((h1 + h2) / 2, rel=1e-6)
    assert float(masked_entropy(log_p, torch.tensor([[False, True]]))) == pytest.approx(h2, rel=1e-6)


def test_policy_gradient_raises_the_rewarded_token():
    """Score-function estimator: a categorical policy whose reward favours token 0 moves mass to token 0."""
    torch.manual_seed(0)
    logits = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    start = float(logits.detach().softmax(-1)[0])
    for _ in range(20):
        log_p = logits.log_softmax(-1)
        x = torch.multinomial(log_p.detach().exp(), 64, replacement=True)
        reward = (x == 0).float()
        adv = group_advantages(reward, group_size=8)
        loss = student_policy_loss(torch.ones(64), adv, log_p[x])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(logits.detach().softmax(-1)[0]) > start + 0.3


def test_policy_loss_value_and_detach():
    w, a = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.5, -1.0], requires_grad=True)
    lp = torch.tensor([-3.0, -4.0], requires_grad=True)
    loss = student_policy_loss(w, a, lp)
    assert float(loss.detach()) == pytest.approx(-((1 * 0.5 * -3) + (2 * -1 * -4)) / 2)
    loss.backward()
    assert w.grad is None and a.grad is None
    assert torch.allclose(lp.grad, -(torch.tensor([1.0, 2.0]) * torch.tensor([0.5, -1.0])) / 2)


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(Exception):
        DistillConfig(not_a_field=1)
    from discdistill.config import build

    with pytest.raises(ConfigError):
        build(DistillConfig, {"tau_min": 0.9, "tau_max": 0.1})
    with pytest.raises(ConfigError):
        build(DistillConfig, {"kl": "sideways"})
    assert DistillConfig(batch_rows=8, group_size=4).samples_per_iteration == 32
    assert all(f.description for f in DistillConfig.model_fields.values())


def test_ablation_ladder_is_cumulative_and_ends_at_the_base():
    base = DistillConfig(student_lr=3e-4, kl_weight=0.05)
    ladder = ablation_ladder(base)
    names = [name for name, _ in ladder]
    assert names[0] == "none" and len(ladder) == 8
    none = ladder[0][1]
    assert (not none.two_step and not none.coupled_tau and none.omega == "constant" and none.advantage_norm == "none"
            and none.kl_weight == 0 and none.entropy_weight == 0)
    assert ladder[1][1].two_step and not ladder[1][1].coupled_tau
    assert ladder[-2][1].entropy_weight == 0 and ladder[-2][1].kl_weight == 0.05
    assert ladder[-1][1] == base
    assert all(cfg.student_lr == 3e-4 for _, cfg in ladder)


def test_window_sum_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    assert torch.equal(window_sum(v, 0), v)
    assert torch.equal(window_sum(v, 1), torch.tensor([[3.0, 6.0, 9.0, 12.0, 9.0], [0.0, 1.0, 1.0, 1.0, 0.0]]))
    assert torch.equal(window_sum(v, 2)[0], torch.tensor([6.0, 10.0, 15.0, 14.0, 12.0]))
    assert torch.equal(window_sum(v, 9), v.sum(-1, keepdim=True).expand(2, 5))  # wider than L: the row's sum
    with pytest.raises(ValueError, match="half_width"):
        window_sum(v, -1)


def test_local_advantages_by_hand():
    r = torch.tensor([[1.0, 4.0], [3.0, 0.0], [5.0, 2.0], [7.0, 2.0]])
    # batch: per-position means (4, 2); centred [[-3, 2], [-1, -2], [1, 0], [3, 0]]; std of the 8 = sqrt(28/7) = 2
    expected = torch.tensor([[-3.0, 2.0], [-1.0, -2.0], [1.0, 0.0], [3.0, 0.0]]) / 2.0
    assert torch.allclose(local_advantages(r, "batch", 2), expected, atol=1e-6)
    # group of 2: means (2, 2) and (6, 2); centred [[-1, 2], [1, -2]] (std sqrt(10/3)), [[-1, 0], [1, 0]] (sqrt(2/3))
    group = local_advantages(r, "group", 2)
    assert torch.allclose(group[:2], torch.tensor([[-1.0, 2.0], [1.0, -2.0]]) / math.sqrt(10 / 3), atol=1e-6)
    assert torch.allclose(group[2:], torch.tensor([[-1.0, 0.0], [1.0, 0.0]]) / math.sqrt(2 / 3), atol=1e-6)
    assert torch.equal(local_advantages(r, "none", 2), r)
    assert float(local_advantages(r * 100, "batch", 4, clip=0.5).abs().max()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="groups of 3"):
        local_advantages(r, "group", 3)


def test_local_policy_loss_equals_the_sequence_loss_for_a_constant_advantage():
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.25, -1.0, -3.0]], requires_grad=True)
    w, a = torch.tensor([2.0, 0.5]), torch.tensor([1.5, -1.0])
    local = local_policy_loss(w, a[:, None].expand(2, 3), lp)
    assert float(local.detach()) == pytest.approx(float(student_policy_loss(w, a, lp.sum(-1)).detach()))
    # by hand: -mean(2 * 1.5 * -3.5, 0.5 * -1 * -4.25) = -(-10.5 + 2.125) / 2
    assert float(local.detach()) == pytest.approx(4.1875)
    per_token = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    loss = local_policy_loss(w, per_token, lp)
    assert float(loss.detach()) == pytest.approx(-(2 * (-1.0 + 0.5) + 0.5 * (2 * -1.0)) / 2)
    loss.backward()  # d/d lp_ij = -w_i A_ij / N
    assert torch.allclose(lp.grad, -(w[:, None] * per_token) / 2)


def test_position_rewards_of_both_objectives():
    logits = torch.tensor([[1.0, -20.0, 3.0], [0.5, 0.5, 9.0]])
    masked = torch.tensor([[True, True, False], [False, True, True]])
    token = TokenObjective().position_reward(logits, masked, clamp=8.0)
    assert torch.equal(token, torch.tensor([[1.0, -8.0, 0.0], [0.0, 0.5, 8.0]]))
    sequence = SequenceObjective().position_reward(logits, masked, clamp=8.0)
    assert torch.equal(sequence, torch.tensor([[1.0, -8.0, 3.0], [0.5, 0.5, 8.0]]))
    # the sequence reward is their sum where no clamp binds
    assert float(SequenceObjective().reward(logits[:, [0, 2]], masked, 8.0)[0]) == pytest.approx(4.0)
