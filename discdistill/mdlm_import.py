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

Reading the files (safely: nothing that could run code is unpickled) is `discdistill.mdlm_files`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from discdistill.config import ModelConfig, build
from discdistill.errors import CheckpointError
from discdistill.mdlm_files import EMA_PREFIX, hub_config_fields, read_resolved, resolve_source
from discdistill.models.rotary import rotary_inv_freq

#: Buffers in MDLM's state dict (not parameters: absent from the EMA list).
BUFFER_NAMES: tuple[str, ...] = ("rotary_emb.inv_freq",)

_DEFAULT_HEAD_DIM = 64
_DEFAULT_SEQ_LEN = 1024
_DEFAULT_DROPOUT = 0.1

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


# ------------------------------------------------------------------------------------------ converting


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes; keep only ``backbone.*`` when the dict has such keys (lightning, hub)."""
    cleaned = {k.removeprefix("module.").replace("_orig_mod.", ""): v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in cleaned):
        return {k.removeprefix("backbone."): v for k, v in cleaned.items() if k.startswith("backbone.")}
    return cleaned


def _ema_list(sd: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    indexed = {int(k[len(EMA_PREFIX):]): v for k, v in sd.items() if k.startswith(EMA_PREFIX)}
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
    """MDLM tensors (as `mdlm_files.read_mdlm_state_dict` returns them) -> (our DiT state dict, inferred fields).

    EMA weights replace the raw ones when present and ``prefer_ema``. ``n_heads`` is used only when the
    state dict has no ``rotary_emb.inv_freq`` to infer it from. The result loads into
    ``DiT(ModelConfig(**fields))`` with ``strict=True``; a key set that does not fit raises `CheckpointError`.
    """
    shadow = _ema_list(sd)
    weights = _strip_prefixes({k: v for k, v in sd.items() if not k.startswith(EMA_PREFIX)})
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

    path = resolve_source(src)
    hub_fields = hub_config_fields(path)
    n_heads = overrides.get("n_heads", hub_fields.get("n_heads"))
    sd = read_resolved(path)
    uses_ema = prefer_ema and any(k.startswith(EMA_PREFIX) for k in sd)
    weights, fields = convert_mdlm_state_dict(sd, prefer_ema=prefer_ema, n_heads=n_heads)
    config: ModelConfig = build(ModelConfig, {**fields, **hub_fields, **overrides})
    model = DiT(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{src}: weights do not fit the inferred configuration ({err})") from err
    extra = {"imported_from": str(src), "source_format": "mdlm", "weights": "ema" if uses_ema else "raw"}
    return Path(save_pretrained(model, out_dir, extra=extra))
