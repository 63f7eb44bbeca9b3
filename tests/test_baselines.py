"""The matched-entropy baseline: a tempered teacher and the bisection that picks its temperature."""

from __future__ import annotations

import pytest
import torch

from discdistill.evaluation.baselines import TemperedDenoiser, matched_temperature
from tests.conftest import small_dit


def test_tempered_denoiser_divides_the_logits_and_keeps_the_contract():
    model = small_dit(6, 5, 8, seed=0).eval()
    z, sigma = torch.randint(0, 6, (3, 8)), torch.zeros(3)
    tempered = TemperedDenoiser(model, 0.5)
    assert (tempered.vocab_size, tempered.mask_id, tempered.seq_len) == (model.vocab_size, model.mask_id, model.seq_len)
    with torch.no_grad():
        assert torch.allclose(tempered(z, sigma), 2.0 * model(z, sigma))
    with pytest.raises(AssertionError, match="positive"):
        TemperedDenoiser(model, 0.0)


def softmax_entropy(logits: torch.Tensor, t: float) -> float:
    p = (logits / t).softmax(-1)
    return float(-(p * p.log()).sum())


def test_matched_temperature_finds_the_softmax_temperature_of_a_target_entropy():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    target = softmax_entropy(logits, 0.8)
    t = matched_temperature(lambda temp: softmax_entropy(logits, temp), target, low=0.5, high=1.0, bisections=8)
    assert t == pytest.approx(0.8, abs=0.5 / 2**9)
    # outside the bracket: the nearest end, within the last bracket's half-width
    assert matched_temperature(lambda temp: temp, 2.0, 0.5, 1.0, bisections=3) == pytest.approx(1.0 - 0.5 / 16)
    assert matched_temperature(lambda temp: temp, 0.0, 0.5, 1.0, bisections=3) == pytest.approx(0.5 + 0.5 / 16)
    # the defaults: [0.5, 1], 5 bisections
    assert matched_temperature(lambda temp: temp, 0.7) == pytest.approx(0.7, abs=0.5 / 2**6)
