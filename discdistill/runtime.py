"""Run plumbing shared by pre-training, distillation and evaluation: the device, signals, the metrics
log and the non-finite guard. (Run-directory layout and locking: `discdistill.rundir`.)"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from discdistill.errors import ConfigError, DiscdistillError, NumericalError
from discdistill.storage import atomic_write_bytes


class TrainingInterrupted(DiscdistillError):
    """SIGINT/SIGTERM arrived; the state after the last full step was saved."""


class StopRequest:
    """While active, SIGINT and SIGTERM set ``requested`` instead of killing the loop mid-step.

    The loop checks the flag after each full optimiser step, saves a checkpoint and stops, so the
    saved state is always consistent. A second signal restores the default handler (kill now).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class MetricsLog:
    """Append-only JSONL, flushed each line so a crash loses nothing already logged.

    Lines past ``start_step`` (left by a run that died after its last checkpoint) are dropped, so a
    resumed run's log has each step once.
    """

    def __init__(self, path: Path, start_step: int = 0) -> None:
        kept = []
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())  # a crash here keeps the old log
        self.handle = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class NonfiniteGuard:
    """Counts steps skipped for a non-finite loss; more than ``limit`` in a row stop the run."""

    def __init__(self, limit: int, skipped: int = 0, streak: int = 0) -> None:
        self.limit, self.skipped, self.streak = limit, skipped, streak

    def update(self, finite: bool, step: int, checkpoint_dir: Path) -> None:
        if finite:
            self.streak = 0
            return
        self.skipped, self.streak = self.skipped + 1, self.streak + 1
        if self.streak > self.limit:
            raise NumericalError(
                f"the loss was non-finite for {self.streak} consecutive steps (up to step {step}); stopped without "
                f"saving: the last good checkpoint is in {checkpoint_dir}. Lower the learning rate, check the "
                "data, or raise max_nonfinite")

    def state(self) -> dict[str, int]:
        return {"nonfinite_skipped": self.skipped, "nonfinite_streak": self.streak}


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draws from torch's global generator inside use ``seed``; the caller's generator state is restored
    after, so library code never resets a user's RNG (weight init and dropout need the global one)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def check_resumable(saved: dict[str, Any], now: dict[str, Any], may_change: frozenset[str], out_dir: Path) -> None:
    """The one resume check: refuse a ``--resume`` whose settings would change the numbers (every
    config field differing from the saved one, except those in ``may_change``)."""
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in may_change)
    if changed:
        raise ConfigError(f"--resume: {out_dir} was trained with different settings ({', '.join(changed)}); "
                          "use the same options or a new --out directory")
