"""The cheap alternative a distilled student must beat: the teacher sampled at a lower temperature.

A student that only sharpens its teacher's conditionals gains on any mode-seeking metric (word
validity, exact NLL) by losing entropy, which dividing the teacher's logits by T < 1 also does for
free. So every quality table has a row "teacher at the student's step count and temperature T, T
chosen so that its entropy matches the student's" (issue 14's matched-entropy row):

    T = matched_temperature(lambda t: entropy_of(draw(TemperedDenoiser(teacher, t))), target=student_entropy)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class TemperedDenoiser(nn.Module):
    """``model``'s logits divided by ``temperature`` (T < 1 sharpens every conditional p(x_0 | z_t))."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        assert temperature > 0, f"temperature must be positive, got {temperature}"
        self.model, self.temperature = model, temperature
        self.vocab_size, self.mask_id, self.seq_len = model.vocab_size, model.mask_id, model.seq_len

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(z, sigma) / self.temperature


def matched_temperature(entropy_at: Callable[[float], float], target: float, low: float = 0.5, high: float = 1.0,
                        bisections: int = 5) -> float:
    """T in [low, high] whose sample entropy ``entropy_at(T)`` is closest to ``target``, by bisection.

    Assumes the entropy rises with T (it does for a softmax's, and in practice for a sampler's output);
    returns the midpoint of the last bracket, so the error in T is (high - low) / 2^(bisections + 1).
    """
    assert 0 < low < high and bisections >= 1
    for _ in range(bisections):
        mid = (low + high) / 2
        if entropy_at(mid) > target:
            high = mid
        else:
            low = mid
    return (low + high) / 2
