"""One run directory, one writer: what a run owns, who may write it, and what ``--resume`` and
``--overwrite`` do to it.

A run directory (``--out``) holds the artefacts of one `pretrain` or `train` run (their names are
the ``artefacts`` of a `RunDirectory`) and, while a process writes it, ``OUT/.lock``: the writer's pid,
held with an exclusive ``flock`` that the kernel drops when the process dies. So

* a second process on the same ``--out`` is refused (the lock is held);
* a lock file left by a killed process is free to take: it is taken over, with a warning;
* without ``--resume`` an existing run is never touched: the error names ``--resume`` and ``--overwrite``;
* with ``--overwrite`` the old artefacts are first moved into ``OUT/.replaced/`` (renames only) and
  deleted only once the new run's first checkpoint is safely written (`RunDirectory.checkpoint_saved`).
  If the new run fails before that, they are moved back; if it is killed before that, the next
  command on ``OUT`` moves them back (and says so) before doing anything else.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from discdistill.errors import ConfigError, RunInUseError, StorageError
from discdistill.storage import storage_error

LOCK_FILE = ".lock"
REPLACED_DIR = ".replaced"

try:  # POSIX; elsewhere the lock degrades to "the pid in .lock is alive"
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def check_writable(directory: str | Path) -> None:
    """Refuse, before any work and without creating anything, an output ``directory`` that could not be
    made: its nearest existing ancestor must be a writable directory."""
    directory = Path(directory).absolute()
    existing = next(d for d in [directory, *directory.parents] if d.exists())
    if not existing.is_dir():
        raise StorageError(f"cannot write {directory}: {existing} is a file, not a directory; choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write {directory}: {existing} is not writable; choose another output path")


class RunLock:
    """An exclusive, crash-safe lock on ``directory`` (``directory/.lock`` holds the owner's pid)."""

    def __init__(self, directory: Path, warn: Callable[[str], None] = _warn) -> None:
        self.path, self.warn, self._fd = directory / LOCK_FILE, warn, None
        self._created: list[Path] = []  # directories acquire made, removed again by release if still empty

    def acquire(self) -> None:
        missing = [d for d in [self.path.parent, *self.path.parent.parents] if not d.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._created = missing
            fd = self._open_locked()
        except OSError as err:
            raise storage_error(err, self.path.parent) from err
        previous = _read_pid(self.path)
        if previous is not None and previous != os.getpid():
            self.warn(f"taking over the lock of {self.path.parent} left by process {previous}, which is no longer running")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._lock(fd):
                os.close(fd)
                owner = _read_pid(self.path)
                raise RunInUseError(f"{self.path.parent} is in use by another discdistill process"
                                    f"{f' (pid {owner})' if owner else ''}; wait for it to finish or choose another --out")
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                return fd
            os.close(fd)  # the previous owner unlinked the file between our open and our lock: retry

    def _lock(self, fd: int) -> bool:
        if fcntl is None:  # pragma: no cover - no flock: free when the recorded owner is gone
            owner = _read_pid(self.path)
            return owner is None or owner == os.getpid() or not _pid_alive(owner)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # unlink while still holding the lock: no one can take a stale copy
        os.close(self._fd)
        self._fd = None
        for directory in self._created:  # innermost first: a failed run leaves no empty --out behind
            try:
                directory.rmdir()
            except OSError:  # not empty (the run wrote something) or already gone
                break
        self._created = []


class RunDirectory:
    """The run directory ``path`` whose run consists of ``artefacts`` (names directly under it).

    Use as a context manager around the whole run::

        with RunDirectory(out, ("model", "checkpoint", "metrics.jsonl"), resume=resume, overwrite=overwrite) as run:
            ...; save_training_state(...); run.checkpoint_saved()
    """

    def __init__(self, path: str | Path, artefacts: Iterable[str], *, resume: bool = False, overwrite: bool = False,
                 writer: bool = True, warn: Callable[[str], None] = _warn) -> None:
        if resume and overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
        self.path, self.artefacts = Path(path), tuple(artefacts)
        self.resume, self.overwrite, self.warn = resume, overwrite, warn
        self.writer = writer  # False on the ranks of a torchrun job that do not write (all but rank 0)
        self._lock = RunLock(self.path, warn) if writer else None
        self._set_aside = False

    # -------------------------------------------------------------------------------------- queries

    def existing(self) -> list[str]:
        """Artefacts of a run already present (kept checkpoint copies DIR.1, DIR.2, ... included)."""
        if not self.path.is_dir():
            return []
        found = []
        for entry in sorted(self.path.iterdir()):
            base = entry.name.split(".", 1)[0] if entry.is_dir() and entry.name[:1] != "." else entry.name
            if entry.name in self.artefacts or (base in self.artefacts and entry.name[len(base) + 1:].isdigit()):
                found.append(entry.name)
        return found

    @property
    def replaced(self) -> Path:
        return self.path / REPLACED_DIR

    # -------------------------------------------------------------------------------------- lifecycle

    def preflight(self) -> None:
        """Refuse now, before any expensive set-up, what `__enter__` would refuse (a busy directory, an
        existing run without --resume or --overwrite); changes nothing but an interrupted overwrite."""
        if not self.writer:
            return
        self._lock.acquire()
        try:
            self._check()
        finally:
            self._release()

    def __enter__(self) -> RunDirectory:
        if not self.writer:
            return self
        self._lock.acquire()
        try:
            present = self._check()
            if present and self.overwrite:
                self._set_aside_old_run(present)
        except BaseException:
            self._release()
            raise
        return self

    def _check(self) -> list[str]:
        self._recover_interrupted_overwrite()
        present = self.existing()
        if present and not self.resume and not self.overwrite:
            raise ConfigError(f"{self.path} already holds a run ({', '.join(present)}); pass --resume to continue "
                              "it, --overwrite to replace it, or choose a new --out")
        return present

    def checkpoint_saved(self) -> None:
        """The new run has a complete checkpoint: the run it replaces may now go."""
        if self._set_aside:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self._set_aside = False

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._set_aside:
                if exc_type is None:
                    self.checkpoint_saved()
                else:
                    self._restore_old_run()
                    self.warn(f"the new run failed before its first checkpoint: the previous run in {self.path} "
                              "is restored")
        finally:
            self._release()

    # -------------------------------------------------------------------------------------- moves

    def _set_aside_old_run(self, present: list[str]) -> None:
        shutil.rmtree(self.replaced, ignore_errors=True)
        self.replaced.mkdir()
        for name in present:
            os.replace(self.path / name, self.replaced / name)
        for stale in self.path.glob(".*.tmp"):  # half-written temps of the old run
            shutil.rmtree(stale, ignore_errors=True)
        self._set_aside = True

    def _restore_old_run(self) -> None:
        for name in self.existing():  # the new run's partial artefacts (no complete checkpoint yet)
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        for entry in self.replaced.iterdir():
            os.replace(entry, self.path / entry.name)
        self.replaced.rmdir()
        self._set_aside = False

    def _recover_interrupted_overwrite(self) -> None:
        """``.replaced`` is left only when a process was killed between setting a run aside and the new
        run's first checkpoint (or while deleting it afterwards)."""
        if not self.replaced.is_dir():
            return
        if any(self._is_complete_checkpoint(self.path / name) for name in self.existing()):
            shutil.rmtree(self.replaced, ignore_errors=True)  # the new run got its checkpoint: finish the deletion
            return
        self._restore_old_run()
        self.warn(f"an --overwrite of {self.path} was interrupted before the new run's first checkpoint: "
                  "the previous run is restored")

    @staticmethod
    def _is_complete_checkpoint(path: Path) -> bool:
        return path.is_dir() and ((path / "state.json").is_file() or (path / "config.json").is_file())

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
