"""Import published MDLM (and DUO) checkpoints into a discdistill `DiT`.

    from discdistill.mdlm_import import import_mdlm
    import_mdlm("kuleshov-group/mdlm-owt", "teachers/mdlm-owt")      # hub id (needs network or HF cache)
    import_mdlm("/data/mdlm.ckpt", "teachers/mdlm-owt")             # MDLM's lightning checkpoint

Our `DiT` uses MDLM's own parameter names, so the mapping is prefix stripping plus, for lightning
checkpoints, taking the EMA weights. Verified against kuleshov-group/mdlm ``models/dit.py`` (``DIT``),
``models/ema.py``, ``diffusion.py``, the hub model's ``modeling_mdlm.py`` (``MDLM`` wrapping
``DITBackbone`` as ``backbone``) and s-sahoo/duo ``models/dit.py`` (same names).

Sources and their keys
----------------------

| source | key in the source | our key |
|---|---|---|
| hub model `kuleshov-group/mdlm-owt` (transformers `MDLM`, safetensors) | `backbone.<k>` | `<k>` |
| lightning `.ckpt` (MDLM, DUO) | `state_dict["backbone.<k>"]` | `<k>` |
| lightning `.ckpt` EMA (preferred) | `ema["shadow_params"][i]` | `mdlm_parameter_names(N)[i]` |
| bare `DIT` state dict | `<k>` | `<k>` |
| DDP / torch.compile wrappers | leading `module.`, any `_orig_mod.` | removed |

`<k>` runs over (V vocabulary incl. mask, H hidden, C cond_dim, d = H / n_heads, n < N blocks):

| key | shape | role |
|---|---|---|
| `vocab_embed.embedding` | [V, H] | input embedding (untied) |
| `sigma_map.mlp.0.weight`, `.bias` | [C, 256], [C] | noise-level MLP, layer 1 |
| `sigma_map.mlp.2.weight`, `.bias` | [C, C], [C] | noise-level MLP, layer 2 |
| `rotary_emb.inv_freq` | [d / 2] | rotary frequencies (buffer) |
| `blocks.{n}.norm1.weight` | [H] | pre-attention norm scale |
| `blocks.{n}.attn_qkv.weight` | [3H, H] | q, k, v (no bias) |
| `blocks.{n}.attn_out.weight` | [H, H] | attention output (no bias) |
| `blocks.{n}.norm2.weight` | [H] | pre-MLP norm scale |
| `blocks.{n}.mlp.0.weight`, `.bias` | [4H, H], [4H] | MLP in |
| `blocks.{n}.mlp.2.weight`, `.bias` | [H, 4H], [H] | MLP out |
| `blocks.{n}.adaLN_modulation.weight`, `.bias` | [6H, C], [6H] | shift, scale, gate (attn, mlp) |
| `output_layer.norm_final.weight` | [H] | final norm scale |
| `output_layer.linear.weight`, `.bias` | [V, H], [V] | output projection (untied) |
| `output_layer.adaLN_modulation.weight`, `.bias` | [2H, C], [2H] | final shift, scale |

EMA. MDLM's lightning module keeps ``models.ema.ExponentialMovingAverage`` over
``chain(backbone.parameters(), noise.parameters())`` and stores it in the checkpoint as
``ckpt["ema"] = {"decay", "num_updates", "shadow_params": [tensor, ...]}``: a bare list in parameter
registration order, no names, buffers excluded. `mdlm_parameter_names` is that order (it equals
``[n for n, _ in DiT(cfg).named_parameters()]``); extra trailing entries (learnable noise-schedule
parameters; MDLM's log-linear schedule has none) are ignored. MDLM evaluates and samples with the EMA
weights, so they are preferred; ``prefer_ema=False`` takes the raw ``state_dict`` weights. The hub
model holds one set of weights (the released ones) and no EMA.

Inferred configuration: vocab_size, hidden_size from ``vocab_embed.embedding``; cond_dim from
``sigma_map.mlp.0.weight``; n_blocks from the block indices; mlp_ratio from ``mlp.0``; n_heads from
``rotary_emb.inv_freq`` (head_dim = 2 * its length) when present, else from the hub ``config.json``
(``n_heads``), else hidden_size / 64 (MDLM small: 768 / 64 = 12, medium: 1024 / 64 = 16); seq_len
from ``config.json`` (``model_length``) else 1024 (MDLM OpenWebText); mask_id = vocab_size - 1 (MDLM
appends [MASK] after GPT-2's 50257 tokens); dropout from ``config.json`` else 0.1 (MDLM's). Tensors
are converted to float32. A missing ``rotary_emb.inv_freq`` is recomputed (base 10000, as MDLM).

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

from discdistill.config import ModelConfig, build
from discdistill.errors import CheckpointError
from discdistill.models.rotary import rotary_inv_freq

#: Top-level packages whose pickled objects are training metadata; they load as inert placeholders.
METADATA_PACKAGES: frozenset[str] = frozenset({
    "omegaconf", "hydra", "transformers", "tokenizers", "lightning", "lightning_fabric", "pytorch_lightning",
    "torchmetrics", "numpy", "typing", "pathlib", "collections", "datetime", "argparse",
})

#: Buffers in MDLM's state dict (not parameters: absent from the EMA list).
BUFFER_NAMES: tuple[str, ...] = ("rotary_emb.inv_freq",)

_EMA_PREFIX = "ema.shadow_params."
_DEFAULT_HEAD_DIM = 64
_DEFAULT_SEQ_LEN = 1024
_DEFAULT_DROPOUT = 0.1
_TENSOR_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_BLOCK_PARAMS = (
    "norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight",
    "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
    "adaLN_modulation.weight", "adaLN_modulation.bias",
)
_HEAD_PARAMS = ("vocab_embed.embedding", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias",
                "sigma_map.mlp.2.weight", "sigma_map.mlp.2.bias")
_OUTPUT_PARAMS = ("output_layer.norm_final.weight", "output_layer.linear.weight", "output_layer.linear.bias",
                  "output_layer.adaLN_modulation.weight", "output_layer.adaLN_modulation.bias")


def mdlm_parameter_names(n_blocks: int) -> list[str]:
    """MDLM's DIT parameter names in registration order (the order of its EMA ``shadow_params``)."""
    blocks = [f"blocks.{n}.{name}" for n in range(n_blocks) for name in _BLOCK_PARAMS]
    return [*_HEAD_PARAMS, *blocks, *_OUTPUT_PARAMS]


# ------------------------------------------------------------------------------------------- reading


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
            out.update(_tensors_only({f"{_EMA_PREFIX}{i}": t for i, t in enumerate(shadow)}, "ema", path))
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


def _resolve(src: str | Path) -> Path:
    """A local file or directory, or a downloaded hub snapshot for an ``owner/name`` id."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    text = str(src)
    if _HUB_ID.match(text) and not text.endswith(_TENSOR_SUFFIXES):
        return _download(text)
    raise CheckpointError(f"checkpoint {src} does not exist (pass a local file or directory, or a hub id owner/name)")


def _read_local(path: Path) -> dict[str, torch.Tensor]:
    if path.is_file():
        return _read_file(path)
    merged: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        merged.update(_read_file(file))
    return merged


def _hub_config_fields(path: Path) -> dict[str, Any]:
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
    return _read_local(_resolve(src))


# ------------------------------------------------------------------------------------------ converting


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes; keep only ``backbone.*`` when the dict has such keys (lightning, hub)."""
    cleaned = {k.removeprefix("module.").replace("_orig_mod.", ""): v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in cleaned):
        return {k.removeprefix("backbone."): v for k, v in cleaned.items() if k.startswith("backbone.")}
    return cleaned


def _ema_list(sd: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    indexed = {int(k[len(_EMA_PREFIX):]): v for k, v in sd.items() if k.startswith(_EMA_PREFIX)}
    if sorted(indexed) != list(range(len(indexed))):
        raise CheckpointError("EMA shadow parameters are not numbered 0..n-1 without gaps")
    return [indexed[i] for i in range(len(indexed))]


def _require(weights: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in weights:
        sample = ", ".join(sorted(weights)[:6]) or "none"
        raise CheckpointError(f"not an MDLM DiT state dict: no {key!r} (found keys such as {sample})")
    return weights[key]


def _infer_fields(weights: Mapping[str, torch.Tensor], n_heads: int | None) -> dict[str, Any]:
    vocab_size, hidden = _require(weights, "vocab_embed.embedding").shape
    cond_dim = _require(weights, "sigma_map.mlp.0.weight").shape[0]
    indices = {int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not indices:
        raise CheckpointError("not an MDLM DiT state dict: no blocks.N.* keys")
    mlp_ratio, rest = divmod(_require(weights, "blocks.0.mlp.0.weight").shape[0], hidden)
    if rest:
        raise CheckpointError(f"MLP width is not a multiple of hidden_size {hidden}")
    inv_freq = weights.get("rotary_emb.inv_freq")
    if inv_freq is not None:
        head_dim = 2 * inv_freq.numel()
        if hidden % head_dim or (n_heads is not None and n_heads * head_dim != hidden):
            raise CheckpointError(
                f"rotary_emb.inv_freq implies head_dim {head_dim}, inconsistent with hidden_size {hidden}"
                + (f" and n_heads {n_heads}" if n_heads is not None else "")
            )
        n_heads = hidden // head_dim
    elif n_heads is None:
        if hidden % _DEFAULT_HEAD_DIM:
            raise CheckpointError(f"cannot infer n_heads for hidden_size {hidden}; pass n_heads explicitly")
        n_heads = hidden // _DEFAULT_HEAD_DIM
    return dict(
        vocab_size=int(vocab_size), mask_id=int(vocab_size) - 1, seq_len=_DEFAULT_SEQ_LEN, hidden_size=int(hidden),
        n_blocks=max(indices) + 1, n_heads=int(n_heads), cond_dim=int(cond_dim), mlp_ratio=int(mlp_ratio),
        dropout=_DEFAULT_DROPOUT,
    )


def convert_mdlm_state_dict(
    sd: Mapping[str, torch.Tensor], *, prefer_ema: bool = True, n_heads: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """MDLM tensors (as `read_mdlm_state_dict` returns them) -> (our DiT state dict, inferred ModelConfig fields).

    EMA weights replace the raw ones when present and ``prefer_ema``. ``n_heads`` is used only when the
    state dict has no ``rotary_emb.inv_freq`` to infer it from. The result loads into
    ``DiT(ModelConfig(**fields))`` with ``strict=True``; a key set that does not fit raises `CheckpointError`.
    """
    shadow = _ema_list(sd)
    weights = _strip_prefixes({k: v for k, v in sd.items() if not k.startswith(_EMA_PREFIX)})
    fields = _infer_fields(weights, n_heads)
    params = mdlm_parameter_names(fields["n_blocks"])
    if shadow and prefer_ema:
        if len(shadow) < len(params):
            raise CheckpointError(f"the EMA holds {len(shadow)} tensors but the DiT has {len(params)} parameters")
        for name, tensor in zip(params, shadow):  # trailing extras: noise-schedule parameters, not ours
            if name in weights and weights[name].shape != tensor.shape:
                raise CheckpointError(
                    f"EMA tensor for {name} has shape {tuple(tensor.shape)}, the weight {tuple(weights[name].shape)}; "
                    "the EMA list does not follow MDLM's parameter order"
                )
            weights[name] = tensor
    if "rotary_emb.inv_freq" not in weights:
        weights["rotary_emb.inv_freq"] = rotary_inv_freq(fields["hidden_size"] // fields["n_heads"])
    expected = set(params) | set(BUFFER_NAMES)
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            "state dict does not match MDLM's DiT: "
            + (f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; " if missing else "")
            + (f"unexpected {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "")
        )
    return {k: weights[k].to(torch.float32).contiguous() for k in sorted(expected)}, fields


# ------------------------------------------------------------------------------------------- importing


def import_mdlm(src: str | Path, out_dir: str | Path, *, prefer_ema: bool = True, **overrides: Any) -> Path:
    """Read an MDLM checkpoint, build the matching `DiT`, load it strictly and save it with `save_pretrained`.

    ``overrides`` are ModelConfig fields that weights cannot tell (e.g. ``seq_len=1024``,
    ``n_heads=12`` when the checkpoint lacks ``rotary_emb.inv_freq``); they win over the hub
    ``config.json`` and the inferred values. Returns the output directory.
    """
    from discdistill.checkpoint import save_pretrained  # lazy: checkpoint imports models, models import config
    from discdistill.models import DiT

    path = _resolve(src)
    hub_fields = _hub_config_fields(path)
    n_heads = overrides.get("n_heads", hub_fields.get("n_heads"))
    sd = _read_local(path)
    uses_ema = prefer_ema and any(k.startswith(_EMA_PREFIX) for k in sd)
    weights, fields = convert_mdlm_state_dict(sd, prefer_ema=prefer_ema, n_heads=n_heads)
    config: ModelConfig = build(ModelConfig, {**fields, **hub_fields, **overrides})
    model = DiT(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{src}: weights do not fit the inferred configuration ({err})") from err
    extra = {"imported_from": str(src), "source_format": "mdlm", "weights": "ema" if uses_ema else "raw"}
    return Path(save_pretrained(model, out_dir, extra=extra))
