"""Scale-out on torch.distributed: the run context torchrun describes, data sharding, reductions.

Launch with torchrun (docs/operations.md); a plain ``python -m discdistill`` is a world of one::

    torchrun --nproc-per-node 4 -m discdistill pretrain --domain text --out runs/text

Sharding rule (teacher pre-training). Global batch k is the same on every world size: the rows
``EpochBatches(seed).indices(k)`` and the noise drawn for them from a generator seeded by
(seed, k). With W ranks and A = grad_accum, the B rows are cut into W * A equal, contiguous
micro-batches; micro-step a of rank r takes micro-batch a * W + r. No row is seen twice, every row
once, and the averaged gradient equals one process's gradient on the whole batch (float tolerance).

Distillation shards whole data rows: rank r takes rows [r * R / W, (r + 1) * R / W) of each
iteration's R rows, so a group of G student samples (one row's) never spans ranks and grouped
reward normalisation stays local.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from discdistill.errors import ConfigError, DiscdistillError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run: rank, world size, its device. A world of one is a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, rows: int, parts: int = 1, part: int = 0) -> slice:
        """The rows of a global batch of ``rows`` that micro-step ``part`` of ``parts`` on this rank takes."""
        chunks = self.world_size * parts
        if rows % chunks:
            raise ConfigError(f"a global batch of {rows} rows cannot be split evenly over {self.world_size} "
                              f"ranks x {parts} accumulation steps; choose a batch size divisible by {chunks}")
        size = rows // chunks
        start = (part * self.world_size + self.rank) * size
        return slice(start, start + size)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (a copy; identity in a world of one)."""
        value = value.detach().clone()
        if self.distributed:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value

    def mean_metrics(self, record: dict[str, object]) -> dict[str, object]:
        """``record`` with its float values replaced by their mean over ranks (one all-reduce)."""
        keys = [k for k, v in record.items() if isinstance(v, float)]
        if not self.distributed or not keys:
            return record
        means = self.mean(torch.tensor([record[k] for k in keys], dtype=torch.float64, device=self.device))
        return {**record, **dict(zip(keys, means.tolist()))}

    def gather(self, value: object) -> list[object]:
        """``value`` from every rank, in rank order (small picklable objects of our own, e.g. RNG states)."""
        if not self.distributed:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (e.g. a stop signal seen by some ranks only)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks in one flat all-reduce (what DDP does, for loops it cannot wrap)."""
        if not self.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def on_main(self, action: Callable[[], T]) -> T | None:
        """Run ``action`` (e.g. writing a checkpoint) on rank 0 while the others wait; if it fails there,
        every rank raises, so no rank hangs and none exits while rank 0 is still writing."""
        result, failure = None, None
        if self.is_main:
            try:
                result = action()
            except Exception as err:  # noqa: BLE001 - re-raised below, after telling the other ranks
                failure = err
        if self.any(failure is not None):
            raise failure or DiscdistillError("rank 0 failed (its message says why); stopping this rank too")
        return result

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def print(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.is_main:
            print(message, flush=True)


def _device_for(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # one GPU per process, as torchrun's local rank says
    return device


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def init_distributed(device: str = "auto") -> DistContext:
    """The context of this process; joins the process group (nccl on CUDA, else gloo) under torchrun."""
    rank, world_size, local_rank = world_from_env()
    target = _device_for(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, target)


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """``args`` (a discdistill command line holding ``--nproc N``) as the torchrun command that runs it
    in ``nproc`` local processes; ``--standalone`` picks a free port."""
    rest, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "discdistill", *rest]


def shutdown() -> None:
    """Leave the process group (if one was joined): torchrun expects a clean exit from every rank."""
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistContext", "init_distributed", "shutdown", "torchrun_command", "world_from_env"]
