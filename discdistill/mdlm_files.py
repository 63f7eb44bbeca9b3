"""Read the tensors of a published MDLM (or DUO) checkpoint, without running code from it.

`read_mdlm_state_dict` takes a local ``.ckpt`` / ``.bin`` / ``.pt`` / ``.safetensors`` file, a directory
holding them (hub layout, shards merged) or a hub id ``owner/name`` (downloaded with huggingface_hub),
and returns its tensors flat; `discdistill.mdlm_import` maps them onto our `DiT`. Reading is apart from
conversion because it is where untrusted bytes are met.

Safety. Tensor files are read without executing code: ``.safetensors`` directly; ``.ckpt`` / ``.bin``
with ``torch.load(weights_only=True)``. MDLM's lightning checkpoints also pickle training metadata
(``hyper_parameters`` holds an omegaconf ``DictConfig`` and the GPT-2 tokenizer object), which
``weights_only`` refuses. The checkpoint's globals are listed statically first
(``torch.serialization.get_unsafe_globals_in_checkpoint``); those from known metadata packages
(`METADATA_PACKAGES`) are swapped for inert placeholder classes that never import or call the
original, and any other global (``os.system``, ``builtins.exec``, an unknown class) makes the whole
file refused with `CheckpointError`, before anything is unpickled. (This path is tested on synthetic
checkpoints with MDLM's layout; MDLM's released .ckpt itself is a Google Drive download, not fetched
by the tests. If its metadata ever defeats the placeholders, the error says so and the hub model or
a .safetensors export is the way in.)
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from discdistill.errors import CheckpointError

#: Top-level packages whose pickled objects are training metadata; they load as inert placeholders.
METADATA_PACKAGES: frozenset[str] = frozenset({
    "omegaconf", "hydra", "transformers", "tokenizers", "lightning", "lightning_fabric", "pytorch_lightning",
    "torchmetrics", "numpy", "typing", "pathlib", "collections", "datetime", "argparse",
})

#: Where `read_mdlm_state_dict` puts a lightning EMA's shadow parameters: ``EMA_PREFIX + str(i)``.
EMA_PREFIX = "ema.shadow_params."
_TENSOR_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class _Inert:
    """Stands in for a pickled metadata object: accepts any construction and state, does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def _placeholder(full_name: str) -> tuple[type, str]:
    """An `_Inert` subclass allowed under ``full_name``: what torch.load builds instead of the original."""
    return type(f"Inert[{full_name}]", (_Inert,), {"__module__": __name__}), full_name


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), with known metadata globals replaced by placeholders (see module doc)."""
    is_zip = zipfile.is_zipfile(path)
    names: list[str] = []
    if is_zip and hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        try:  # static disassembly of the pickle: nothing is imported or called
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - a malformed file; torch.load below reports it
            names = []
    foreign = sorted(n for n in names if n.split(".")[0] not in METADATA_PACKAGES)
    if foreign:
        raise CheckpointError(
            f"{path} refers to {', '.join(foreign)}, which are neither tensors nor known training metadata; "
            "refusing to unpickle it (a pickle can run arbitrary code). Export the weights to .safetensors "
            "in an environment you trust and import that file instead."
        )
    placeholders = [_placeholder(n) for n in names]
    allow = torch.serialization.safe_globals(placeholders) if placeholders else contextlib.nullcontext()
    try:
        with allow:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # noqa: BLE001 - untrusted bytes fail in many ways; all mean "not loadable"
        raise CheckpointError(
            f"cannot read {path} safely as a PyTorch checkpoint ({type(err).__name__}: {err}). Pass an "
            "MDLM .ckpt / .bin / .safetensors file, or export the weights to .safetensors in a trusted environment."
        ) from err


def _tensors_only(mapping: Mapping[Any, Any], what: str, path: Path) -> dict[str, torch.Tensor]:
    bad = [str(k) for k, v in mapping.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} holds non-tensor entries ({', '.join(bad[:5])})")
    return {str(k): v for k, v in mapping.items()}


def _flatten_checkpoint(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A lightning checkpoint -> its state_dict plus ``ema.shadow_params.{i}``; a bare state dict as is."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        out = _tensors_only(obj["state_dict"], "state_dict", path)
        ema = obj.get("ema")
        shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
        if isinstance(shadow, (list, tuple)):
            out.update(_tensors_only({f"{EMA_PREFIX}{i}": t for i, t in enumerate(shadow)}, "ema", path))
        return out
    if isinstance(obj, Mapping):
        return _tensors_only(obj, "the file", path)
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a lightning checkpoint")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({err})") from err


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in (".ckpt", ".bin", ".pt", ".pth"):
        return _flatten_checkpoint(_torch_load(path), path)
    raise CheckpointError(f"{path}: unsupported file type; expected .ckpt, .bin, .pt, .pth or .safetensors")


def _weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory: all safetensors shards, else pytorch_model*.bin, else one .ckpt."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(directory.glob(pattern))
        if files:
            return files
    ckpts = sorted(directory.glob("*.ckpt"))
    if len(ckpts) == 1:
        return ckpts
    if ckpts:
        raise CheckpointError(f"{directory} holds several .ckpt files ({', '.join(p.name for p in ckpts)}); pass one")
    raise CheckpointError(f"{directory} holds no .safetensors, pytorch_model*.bin or .ckpt file")


def _download(repo_id: str) -> Path:
    """Snapshot of a hub model repository (weights and config only); a clear error when that is impossible."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{repo_id!r} looks like a Hugging Face hub id, but huggingface_hub is not installed "
            "(pip install 'discdistill[hub]'); or download the checkpoint and pass the local file or directory"
        ) from None
    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
        if not any(directory.glob("*.safetensors")):
            directory = Path(snapshot_download(repo_id, allow_patterns=["*.json", "pytorch_model*.bin"]))
    except Exception as err:  # noqa: BLE001 - offline, missing repo, auth, HTTP: all need the same advice
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). When offline "
            "or without access, download the checkpoint elsewhere and pass the local .ckpt / .safetensors file "
            "or directory instead."
        ) from err
    return directory


def resolve_source(src: str | Path) -> Path:
    """A local file or directory, or a downloaded hub snapshot for an ``owner/name`` id.

    Apart from reading so that `discdistill.mdlm_import` can also read the snapshot's config.json
    (`hub_config_fields`) without a second download."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    text = str(src)
    if _HUB_ID.match(text) and not text.endswith(_TENSOR_SUFFIXES):
        return _download(text)
    raise CheckpointError(f"checkpoint {src} does not exist (pass a local file or directory, or a hub id owner/name)")


def read_resolved(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of what `resolve_source` returned: one file, or a directory's weight files merged (shards)."""
    if path.is_file():
        return _read_file(path)
    merged: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        merged.update(_read_file(file))
    return merged


def hub_config_fields(path: Path) -> dict[str, Any]:
    """ModelConfig fields from a hub directory's ``config.json`` (MDLMConfig: model_length, n_heads, dropout).

    Only directories (hub snapshots) are consulted: a config.json that merely sits beside a single
    file may describe something else.
    """
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        return {}
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        return {}
    renames = {"model_length": "seq_len", "n_heads": "n_heads", "dropout": "dropout"}
    return {ours: raw[theirs] for theirs, ours in renames.items() if theirs in raw}


def read_mdlm_state_dict(src: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an MDLM checkpoint, flat: its own keys, plus ``ema.shadow_params.{i}`` for a lightning EMA.

    ``src``: a local ``.ckpt`` (lightning; read with ``torch.load(weights_only=True)``), ``.bin``/``.pt``,
    ``.safetensors``, a directory holding them (hub layout, shards merged), or a hub id such as
    ``kuleshov-group/mdlm-owt`` (needs huggingface_hub and network access or a warm HF cache).
    Raises `CheckpointError` for anything missing, corrupt, or unsafe to unpickle.
    """
    return read_resolved(resolve_source(src))
