"""clip_grad_norm_finite_: non-finite entries zeroed, then the global norm clipped (hand-computed values)."""

from __future__ import annotations

import math

import torch
from torch import nn

from discdistill.optim import clip_grad_norm_finite_


def params_with_grads(*grads: list[float]) -> list[nn.Parameter]:
    params = []
    for values in grads:
        p = nn.Parameter(torch.zeros(len(values)))
        p.grad = torch.tensor(values)
        params.append(p)
    return params


def test_finite_gradient_is_clipped_to_the_global_norm():
    params = params_with_grads([3.0, 0.0], [0.0, 4.0])  # global norm 5
    report = clip_grad_norm_finite_(params, 1.0)
    assert report.norm == 5.0 and not report.nonfinite
    scale = 1.0 / (5.0 + 1e-6)  # torch's clip coefficient
    assert torch.allclose(params[0].grad, torch.tensor([3.0 * scale, 0.0]), rtol=0, atol=1e-7)
    assert torch.allclose(params[1].grad, torch.tensor([0.0, 4.0 * scale]), rtol=0, atol=1e-7)


def test_small_gradient_is_left_alone():
    params = params_with_grads([0.3, 0.4])
    report = clip_grad_norm_finite_(params, 1.0)
    assert math.isclose(report.norm, 0.5, rel_tol=1e-6)
    assert torch.equal(params[0].grad, torch.tensor([0.3, 0.4]))


def test_nonfinite_entries_are_zeroed_and_the_rest_kept():
    params = params_with_grads([float("nan"), 3.0], [4.0, float("inf")], [0.0, 0.0])
    report = clip_grad_norm_finite_(params, 100.0)
    assert report.nonfinite and report.norm == 5.0  # the norm of what is left
    assert torch.equal(params[0].grad, torch.tensor([0.0, 3.0]))
    assert torch.equal(params[1].grad, torch.tensor([4.0, 0.0]))


def test_overflowing_norm_with_finite_entries_reports_finite_and_zeroes():
    params = params_with_grads([1e30, 1e30])  # finite entries whose float32 norm overflows
    report = clip_grad_norm_finite_(params, 1.0)
    assert not report.nonfinite and report.norm == float("inf")
    assert torch.equal(params[0].grad, torch.zeros(2))


def test_matches_torch_clip_bit_for_bit_on_random_gradients():
    torch.manual_seed(0)
    ours, theirs = nn.Linear(7, 5), nn.Linear(7, 5)
    theirs.load_state_dict(ours.state_dict())
    for a, b in zip(ours.parameters(), theirs.parameters()):
        a.grad = torch.randn_like(a) * 3
        b.grad = a.grad.clone()
    report = clip_grad_norm_finite_(ours.parameters(), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
    assert report.norm == float(expected)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_no_gradients():
    p = nn.Parameter(torch.zeros(2))
    report = clip_grad_norm_finite_([p], 1.0)
    assert report.norm == 0.0 and not report.nonfinite
