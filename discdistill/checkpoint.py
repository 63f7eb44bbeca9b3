"""Checkpoints: safetensors for tensors, JSON for everything else; atomic writes; never unpickle.

Layout of a saved model (``save_pretrained``)::

    DIR/config.json        {"format_version", "model_class", "model": ModelConfig, "extra": {...}, "files": {...}}
    DIR/model.safetensors  the state dict

Layout of a training state (``save_training_state``)::

    DIR/state.json         {"format_version", "meta", "optimizers": {name: param_groups + non-tensor state},
                            "schedulers": {...}, "files": {name: size}}
    DIR/tensors.safetensors  module weights, optimiser moments and RNG states under prefixed keys

A directory is written next to its destination and renamed into place, so a crash never leaves a
half-written checkpoint where a good one was. ``config.json``/``state.json`` record each file's size,
so truncation is detected on load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from discdistill.config import ModelConfig, build
from discdistill.errors import CheckpointError

FORMAT_VERSION = 1
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
STATE_JSON = "state.json"
STATE_TENSORS = "tensors.safetensors"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a fresh temp directory; on success it replaces ``directory`` (the old one is removed last)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        old = directory.with_name(f".{directory.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _file_sizes(directory: Path, names: list[str]) -> dict[str, int]:
    return {name: (directory / name).stat().st_size for name in names}


def _check_files(directory: Path, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} has {file.stat().st_size} bytes, "
                                  f"expected {size} (truncated write?)")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is not a discdistill checkpoint ({path.name} not found)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err})") from err
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version!r}; this discdistill reads up to "
                              f"{FORMAT_VERSION}. Upgrade discdistill to read it.")
    return data


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({err})") from err


def _model_classes() -> dict[str, Callable[[ModelConfig], nn.Module]]:
    from discdistill.models import DiT  # local import: models import config, not the reverse

    return {"DiT": DiT}


def _tensor_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_pretrained(model: nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save weights (safetensors) and config (JSON) atomically; ``extra`` is free-form JSON metadata."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(_tensor_dict(model.state_dict()), str(tmp / MODEL_WEIGHTS))
        config = {
            "format_version": FORMAT_VERSION,
            "model_class": type(model).__name__,
            "model": model.config.model_dump(),
            "extra": extra or {},
            "files": _file_sizes(tmp, [MODEL_WEIGHTS]),
        }
        (tmp / MODEL_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_pretrained_config(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a saved model (format version checked)."""
    return _read_json(Path(directory) / MODEL_CONFIG)


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved by `save_pretrained` and load its weights (strict)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config = _read_json(directory / MODEL_CONFIG)
    _check_files(directory, config.get("files", {MODEL_WEIGHTS: (directory / MODEL_WEIGHTS).stat().st_size}))
    classes = _model_classes()
    if config.get("model_class") not in classes:
        raise CheckpointError(f"{directory}: unknown model class {config.get('model_class')!r}")
    model = classes[config["model_class"]](build(ModelConfig, config["model"]))
    state = _load_tensors(directory / MODEL_WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{directory}: weights do not match the saved config ({err})") from err
    return model.to(map_location)


# --------------------------------------------------------------------------------------------- training state

def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng/cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng/cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _split_optimizer_state(name: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state_dict -> (tensors under ``optim/name/...`` keys, the JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        plain[str(index)] = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{name}/{index}/{key}"] = value
            else:
                plain[str(index)][key] = value
    return tensors, {"param_groups": state["param_groups"], "state": plain}


def _join_optimizer_state(name: str, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix):].split("/", 1)
            state.setdefault(int(index), {})[field] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_training_state(
    directory: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
    meta: dict[str, Any],
) -> Path:
    """Everything needed to resume exactly: weights, optimiser moments, schedules, RNG, ``meta`` (step...)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = _rng_tensors()
    for name, module in modules.items():
        tensors.update({f"module/{name}/{k}": v for k, v in module.state_dict().items()})
    optim_json = {}
    for name, optimizer in optimizers.items():
        optim_tensors, optim_json[name] = _split_optimizer_state(name, optimizer.state_dict())
        tensors.update(optim_tensors)
    with atomic_directory(directory) as tmp:
        save_file(_tensor_dict(tensors), str(tmp / STATE_TENSORS))
        state = {
            "format_version": FORMAT_VERSION,
            "meta": meta,
            "optimizers": optim_json,
            "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
            "files": _file_sizes(tmp, [STATE_TENSORS]),
        }
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=2, sort_keys=True, default=_json_default) + "\n")
    return directory


def _json_default(value: Any) -> Any:
    if callable(value):  # LambdaLR keeps its functions out of state_dict, but be safe
        return None
    raise TypeError(f"cannot store {type(value).__name__} in a JSON training state")


def load_training_state(
    directory: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
) -> dict[str, Any]:
    """Restore what `save_training_state` wrote (in place, RNG included); return ``meta``."""
    directory = Path(directory)
    state = _read_json(directory / STATE_JSON)
    _check_files(directory, state["files"])
    tensors = _load_tensors(directory / STATE_TENSORS)
    for name, module in modules.items():
        prefix = f"module/{name}/"
        module_state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(module_state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{directory}: saved {name!r} does not match this run ({err})") from err
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(_join_optimizer_state(name, tensors, state["optimizers"][name]))
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(state["schedulers"][name])
    _restore_rng(tensors)
    return state["meta"]
