"""The `Student` the distillation trainer trains: a copy of the teacher and its exponential moving average.

    student = EMAStudent(copy.deepcopy(teacher))
    logits = student(z, sigma)          # the network being trained (rollout, log-probabilities)
    student.update_ema(0.999)           # ema <- decay * ema + (1 - decay) * network, after each step
    student.ema_model()                 # what is saved as OUT/student and sampled

Both are submodules (one ``.to``/``state_dict`` moves and saves both); only ``network`` is trained,
the EMA stays in eval mode and without gradients whatever ``train()`` is called with.
"""

from __future__ import annotations

import torch
from torch import nn

from discdistill.interfaces import MaskedDiffusionTeacher, Student
from discdistill.optim import ema_update_


class EMAStudent(Student):
    """A trainable denoiser and its EMA copy, behind the denoiser contract (calls go to the trained one)."""

    def __init__(self, network: MaskedDiffusionTeacher) -> None:
        super().__init__()
        self.network = network.train().requires_grad_(True)
        self.ema = _frozen_copy(network)

    @property
    def vocab_size(self) -> int:
        return self.network.vocab_size

    @property
    def seq_len(self) -> int:
        return self.network.seq_len

    @property
    def mask_id(self) -> int:
        return self.network.mask_id

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.network(z, sigma)

    def logits_at(self, z: torch.Tensor, sigma: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return self.network.logits_at(z, sigma, where)

    def ema_model(self) -> MaskedDiffusionTeacher:
        return self.ema

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        ema_update_(self.ema, self.network, decay)

    def train(self, mode: bool = True) -> EMAStudent:
        self.network.train(mode)
        self.ema.eval()
        return self


def _frozen_copy(network: nn.Module) -> MaskedDiffusionTeacher:
    import copy

    return copy.deepcopy(network).eval().requires_grad_(False)
