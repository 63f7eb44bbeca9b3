"""Checkpoints: safetensors for tensors, JSON for everything else; atomic writes; never unpickle.

Layout of a saved model (``save_pretrained``)::

    DIR/config.json        {"format_version", "model_class", "model": ModelConfig, "extra": {...}, "files": {...}}
    DIR/model.safetensors  the state dict

Layout of a training state (``save_training_state``)::

    DIR/state.json         {"format_version", "meta", "optimizers": {name: param_groups + non-tensor state},
                            "schedulers": {...}, "files": {name: {"bytes", "sha256"}}}
    DIR/tensors.safetensors  module weights, optimiser moments and RNG states under prefixed keys

A directory is written next to its destination (``.DIR.*.tmp``), fsynced and renamed into place
(`discdistill.storage`), so a crash never leaves a half-written checkpoint where a good one was. Older
training states are kept beside it, newest first: ``DIR``, ``DIR.1``, ..., ``DIR.{keep-1}`` (rotated by
renames; every name that exists at any moment holds a complete checkpoint). ``config.json``/``state.json``
record each file's size and sha256, so truncation and damage are detected on load, and
`load_latest_training_state` falls back to the newest kept state that is intact.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from discdistill.config import StrictModel
from discdistill.errors import CheckpointError, CorruptCheckpointError

from discdistill.storage import atomic_directory, kept_checkpoints

FORMAT_VERSION = 1
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
STATE_JSON = "state.json"
STATE_TENSORS = "tensors.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _file_records(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """What `_check_files` verifies on load: each file's size and sha256."""
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)} for name in names}


def _check_files(directory: Path, records: dict[str, Any]) -> None:
    """Every recorded file present, of its size and (when recorded) its sha256; else `CorruptCheckpointError`.

    Records written before sha256 was stored are a plain byte count, still checked."""
    for name, record in records.items():
        file = directory / name
        size, digest = (record, None) if isinstance(record, int | None) else (record["bytes"], record.get("sha256"))
        if not file.is_file():
            raise CorruptCheckpointError(f"checkpoint {directory} is incomplete: {name} is missing; restore it from a "
                                         "copy or re-create the checkpoint (pretrain/train --resume writes it again)")
        if size is not None and file.stat().st_size != size:
            raise CorruptCheckpointError(f"checkpoint {directory} is corrupt: {name} has {file.stat().st_size} bytes, "
                                         f"expected {size} (truncated write?)")
        if digest is not None and _sha256(file) != digest:
            raise CorruptCheckpointError(f"checkpoint {directory} is corrupt: {name} does not match its sha256 "
                                         "(damaged on disk or edited)")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CorruptCheckpointError(f"{path.parent} is not a discdistill checkpoint ({path.name} not found)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{path} is corrupt ({err})") from err
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path} is corrupt (not a JSON object)")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version!r}; this discdistill reads up to "
                              f"{FORMAT_VERSION}. Upgrade discdistill to read it.")
    return data


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptCheckpointError(f"{path} is corrupt or not a safetensors file ({err})") from err


def _tensor_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights_dir(directory: str | Path, state: dict[str, torch.Tensor], header: dict[str, Any], *,
                     config_name: str = MODEL_CONFIG, weights_name: str = MODEL_WEIGHTS) -> Path:
    """Write ``directory`` atomically: ``state`` as safetensors, ``header`` (plus the format version and
    the weights file's size and sha256) as JSON. The one writer of model-like directories."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(_tensor_dict(state), str(tmp / weights_name))
        meta = {**header, "format_version": FORMAT_VERSION, "files": _file_records(tmp, [weights_name])}
        (tmp / config_name).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_weights_dir(directory: str | Path, *, config_name: str = MODEL_CONFIG, weights_name: str = MODEL_WEIGHTS,
                     what: str = "model") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read what `save_weights_dir` wrote, every file verified: (the JSON header, the tensors)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not (directory / config_name).is_file():
        raise CorruptCheckpointError(f"{directory} is not a discdistill checkpoint: it holds no {what} "
                                     f"({config_name} not found)")
    meta = _read_json(directory / config_name)
    _check_files(directory, meta.get("files", {weights_name: None}))
    return meta, _load_tensors(directory / weights_name)


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{directory}: weights do not match the saved config ({err})") from err


def save_pretrained(model: nn.Module, directory: str | Path, extra: dict[str, Any] | None = None,
                    run: StrictModel | None = None) -> Path:
    """Save weights (safetensors) and config (JSON) atomically; ``extra`` is free-form JSON metadata,
    ``run`` the model's `discdistill.run_settings.RunSettings` (what sampling must know), stored as "run"."""
    header = {"model_class": type(model).__name__, "model": model.config.model_dump(), "extra": extra or {}}
    if run is not None:
        header["run"] = run.model_dump(mode="json")
    return save_weights_dir(directory, model.state_dict(), header)


def read_pretrained_config(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a saved model (format version checked)."""
    return _read_json(Path(directory) / MODEL_CONFIG)


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved by `save_pretrained` and load its weights (strict)."""
    directory = Path(directory)
    config, state = load_weights_dir(directory)
    from discdistill.backbones import backbone_named  # local: the registry imports plugins, which import this

    backbone = backbone_named(str(config.get("model_class")))
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG alone
        model = backbone.build(config["model"])
    load_state_strict(model, state, directory)
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
    keep: int = 1,
) -> Path:
    """Everything needed to resume exactly: weights, optimiser moments, schedules, RNG, ``meta`` (step...).

    ``keep``: how many training states to keep (this one and ``keep - 1`` older, as DIR.1, DIR.2, ...).
    """
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = _rng_tensors()
    for name, module in modules.items():
        tensors.update({f"module/{name}/{k}": v for k, v in module.state_dict().items()})
    optim_json = {}
    for name, optimizer in optimizers.items():
        optim_tensors, optim_json[name] = _split_optimizer_state(name, optimizer.state_dict())
        tensors.update(optim_tensors)
    with atomic_directory(directory, keep) as tmp:
        save_file(_tensor_dict(tensors), str(tmp / STATE_TENSORS))
        state = {
            "format_version": FORMAT_VERSION,
            "meta": meta,
            "optimizers": optim_json,
            "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
            "files": _file_records(tmp, [STATE_TENSORS]),
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
    missing = {"meta", "optimizers", "schedulers", "files"} - set(state)
    if missing:
        raise CorruptCheckpointError(f"{directory / STATE_JSON} is corrupt (no {', '.join(sorted(missing))})")
    _check_files(directory, state["files"])
    tensors = _load_tensors(directory / STATE_TENSORS)  # everything is validated before anything is restored
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


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def load_latest_training_state(
    directory: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
    warn: Callable[[str], None] = _warn,
) -> tuple[dict[str, Any], Path]:
    """Restore the newest intact kept training state of ``directory``; return (meta, the one used).

    A truncated or unparsable copy is skipped with a warning naming it and the copy used instead;
    other problems (a newer format, a state from another model) are errors, never skipped.
    """
    directory = Path(directory)
    candidates = kept_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"--resume: no checkpoint in {directory}; start without --resume")
    problems: list[str] = []
    for path in candidates:
        try:
            meta = load_training_state(path, modules=modules, optimizers=optimizers, schedulers=schedulers)
        except CorruptCheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warn(f"{'; '.join(problems)}; resuming from the previous good checkpoint {path}")
        return meta, path
    raise CorruptCheckpointError(f"no intact checkpoint to resume from: {'; '.join(problems)}; "
                                 "start again without --resume (or with a new --out)")
