"""Deterministic, resumable batch order over an in-memory (or memory-mapped) block tensor."""

from __future__ import annotations

import torch

from discdistill.errors import DataError


class EpochBatches:
    """Batch ``step`` is a pure function of (seed, step): epoch e uses permutation randperm(N; seed + e).

    Resuming at step k therefore needs no saved state and reproduces the same data order. A batch
    that crosses an epoch boundary takes its tail from the next epoch's permutation.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int) -> None:
        if num_rows < 1:
            raise DataError("the dataset is empty: no full block of tokens could be built from the input")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.num_rows, generator=generator)}  # keep one epoch
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        positions = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = positions // self.num_rows, positions % self.num_rows
        return torch.stack([self._permutation(int(e))[int(o)] for e, o in zip(epochs, offsets)])
