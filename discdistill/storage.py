"""Atomic files and directories: the one way the project writes to disk.

Decisions:

- **Atomic rename.** Every file and directory is written under a temp name beside its destination
  (``.NAME.*.tmp``, same filesystem) and renamed over it with `os.replace`, so a reader, or a run
  killed at any moment, sees either the old complete version or the new one, never a half-written one.
- **fsync of the file, then of the directory.** The data is fsynced before the rename, and the parent
  directory after it, so the new name survives a power loss and never points at unwritten data.
- **Rotation of kept checkpoints.** `atomic_directory` keeps older copies as ``DIR.1``, ``DIR.2``, ...
  by shifting them one rename at a time (oldest first), and deletes copies beyond ``keep`` only after
  the new one is in place: every name that exists at any moment holds a complete checkpoint.
- **One-line errors.** An `OSError` (disk full, permissions) becomes a `StorageError` that says what
  to do and whether the previous version is intact.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from discdistill.errors import StorageError


def _fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable, not only the files' data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path`` (and fsync the
    directory): the one file writer of the project. An OSError becomes a one-line `StorageError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise storage_error(err, path) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise storage_error(err, path, " (any previous file is intact)" if path.exists() else "") from err
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """`atomic_write_bytes` of ``obj`` as sorted, indented JSON: stable bytes, readable diffs."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def kept_index(directory: Path, index: int) -> Path:
    """The ``index``-th newest kept copy of ``directory``: DIR (0), DIR.1, DIR.2, ..."""
    return directory if index == 0 else directory.with_name(f"{directory.name}.{index}")


def kept_checkpoints(directory: str | Path) -> list[Path]:
    """The existing kept copies of ``directory``, newest first (gaps, left by a crash mid-rotation, skipped)."""
    directory = Path(directory)
    pattern = re.compile(rf"{re.escape(directory.name)}\.(\d+)")
    indices = [int(m.group(1)) for p in directory.parent.glob(f"{directory.name}.*")
               if (m := pattern.fullmatch(p.name)) and p.is_dir()] if directory.parent.is_dir() else []
    return [kept_index(directory, i) for i in sorted(indices + ([0] if directory.is_dir() else []))]


def _rotate_into_place(tmp: Path, directory: Path, keep: int) -> None:
    """Shift DIR.i -> DIR.(i+1) (oldest first), move ``tmp`` to DIR, then drop copies beyond ``keep``.

    Each step is one rename, so a kill at any moment leaves only complete checkpoints; the newest
    committed one is the lowest index present. Deleting happens last, after the new one is in place.
    """
    old = kept_checkpoints(directory)
    indices = [0 if p == directory else int(p.name.rsplit(".", 1)[1]) for p in old]
    for index in sorted(indices, reverse=True):
        os.replace(kept_index(directory, index), kept_index(directory, index + 1))
    os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    for index in indices:
        if index + 1 >= keep:
            shutil.rmtree(kept_index(directory, index + 1), ignore_errors=True)


def _remove_stale_temps(directory: Path, current: Path) -> None:
    """Temp directories of writes killed half-way (SIGKILL, power loss): never a checkpoint, safe to drop."""
    for stale in directory.parent.glob(f".{directory.name}.*.tmp"):
        if stale != current:
            shutil.rmtree(stale, ignore_errors=True)


def storage_error(err: OSError, what: Path, intact: str = "") -> StorageError:
    """A one-line, actionable message for an OSError met while writing ``what``."""
    if err.errno == errno.ENOSPC:
        return StorageError(f"disk full while writing {what}; free space and rerun{intact}")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write {what}: {err.strerror}; choose a writable output directory (--out)")
    return StorageError(f"cannot write {what}: {err.strerror or err}{intact}")


@contextmanager
def atomic_directory(directory: str | Path, keep: int = 1) -> Iterator[Path]:
    """Yield a fresh temp directory; on success it becomes ``directory`` and up to ``keep - 1`` older
    copies are kept as DIR.1, DIR.2, ... . An OSError (disk full, permissions) becomes `StorageError`;
    the previous checkpoint is untouched in that case."""
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    except OSError as err:
        raise storage_error(err, directory) from err
    try:
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        _rotate_into_place(tmp, directory, keep)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            intact = f" (the previous {directory.name} is intact)" if directory.is_dir() else ""
            raise storage_error(err, directory, intact) from err
        raise
    _remove_stale_temps(directory, tmp)
