"""Configuration: pydantic models validated once, at the edge.

Every run is described by one of the ``*Config`` models below. They are built from (lowest to
highest priority) defaults and presets, a TOML or JSON file, and ``key=value`` overrides from the
command line (dotted keys reach nested models: ``model.hidden_size=256``). A bad value raises
`ConfigError` naming the field.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from discdistill.errors import ConfigError


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config file must not be silently ignored; NaN and
    infinity are refused for every float (a NaN learning rate passes `gt=0` checks otherwise)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(StrictModel):
    """DiT backbone hyper-parameters (MDLM-compatible)."""

    vocab_size: int = Field(gt=1, description="Vocabulary size including the mask id.")
    mask_id: int = Field(ge=0, description="Id of the absorbing [MASK] token.")
    seq_len: int = Field(gt=0, description="Longest sequence the model accepts.")
    hidden_size: int = Field(128, gt=0)
    n_blocks: int = Field(2, gt=0)
    n_heads: int = Field(2, gt=0)
    cond_dim: int = Field(64, gt=0, description="Width of the time-conditioning vector.")
    mlp_ratio: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})")
        if (self.hidden_size // self.n_heads) % 2:
            raise ValueError("head dimension (hidden_size / n_heads) must be even for rotary embeddings")
        if self.mask_id >= self.vocab_size:
            raise ValueError(f"mask_id ({self.mask_id}) must be < vocab_size ({self.vocab_size})")
        return self


#: Architecture presets. `small` is MDLM's OpenWebText model (about 169M parameters with V = 50258).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, n_blocks=2, n_heads=2, cond_dim=64, dropout=0.0),
    "small": dict(hidden_size=768, n_blocks=12, n_heads=12, cond_dim=128, dropout=0.1),
    "medium": dict(hidden_size=1024, n_blocks=24, n_heads=16, cond_dim=128, dropout=0.1),
}
#: Presets that `parallel = "auto"` shards with FSDP under torchrun (replicas of these get large).
FSDP_PRESETS = frozenset({"medium"})


def model_config_from_preset(preset: str, **fields: Any) -> ModelConfig:
    """A `ModelConfig` from a named preset, with ``fields`` (vocab_size, mask_id, seq_len, ...) on top."""
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    return build(ModelConfig, {**MODEL_PRESETS[preset], **fields})


class ScheduleConfig(StrictModel):
    """Log-linear noise schedule alpha_t = 1 - (1 - eps) t."""

    eps: float = Field(1e-3, gt=0.0, lt=1.0)


class SamplingConfig(StrictModel):
    """How the fused sampling loop runs."""

    steps: int = Field(128, gt=0, description="Denoiser passes (ancestral steps).")
    num_samples: int = Field(16, gt=0)
    batch_size: int = Field(16, gt=0)
    seq_len: int | None = Field(None, gt=0, description="Defaults to the model's seq_len.")
    precision: Literal["float64", "float32"] = Field(
        "float64", description="Categorical sampling precision; float32 truncates the tail (lower entropy)."
    )
    noise_removal: Literal["sample", "argmax"] = "sample"
    cache: bool | None = Field(
        None, description="Reuse a row's logits when it did not change: exact (same samples), pays off when "
        "steps > seq_len. None: on exactly then, for time-unconditioned denoisers.")
    t_min: float = Field(1e-5, gt=0.0, lt=1.0, description="Last time of the grid linspace(1, t_min, N+1).")
    seed: int = 0


class PretrainConfig(StrictModel):
    """Teacher pre-training with the MDLM ELBO."""

    backbone: str = Field("DiT", description="The network: DiT (MDLM's), HFMaskedLM (a transformers masked LM "
                          "built from backbone_config), or a plugin's (discdistill.backbones).")
    backbone_config: dict[str, Any] = Field(default_factory=dict, description="HFMaskedLM: transformers config "
                                            "fields, model_type included (bert, roberta, esm, ...).")
    model_preset: str = Field("tiny", description="DiT architecture preset: " + ", ".join(MODEL_PRESETS))
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="DiT ModelConfig fields on top of the preset.")
    seq_len: int | None = Field(None, gt=0, description="Block length; defaults to the domain's.")
    batch_size: int = Field(32, gt=0)
    steps: int = Field(2000, gt=0, description="Optimiser steps.")
    lr: float = Field(1e-3, gt=0.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    time_conditioned: bool = Field(False, description="Feed sigma_t to the denoiser (MDLM passes 0).")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16: the forward under autocast (weights, optimiser and loss stay float32); "
        "about 2x faster on CPUs with AVX512-BF16 or AMX and on GPUs.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    t_min: float = Field(1e-3, ge=0.0, lt=1.0, description="Training times are drawn from (t_min, 1].")
    eval_every: int = Field(200, gt=0)
    eval_batches: int = Field(8, gt=0)
    save_every: int = Field(500, gt=0)
    log_every: int = Field(10, gt=0)
    seed: int = 0
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimiser step and rank; batch_size is the "
                            "global batch, split over grad_accum x world size micro-batches.")
    parallel: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="Under torchrun: 'ddp' (replicated weights), 'fsdp' (sharded), 'auto' (FSDP for "
        "presets with FSDP_PRESETS, else DDP). Ignored in a single process.")
    keep_checkpoints: int = Field(2, gt=0, description="Training states kept (checkpoint/, checkpoint.1/, ...).")
    max_nonfinite: int = Field(20, ge=0, description="Consecutive non-finite losses (each skipped) that stop the run.")

    @model_validator(mode="after")
    def _check_preset(self) -> PretrainConfig:
        if self.model_preset not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {self.model_preset!r}; choose one of {sorted(MODEL_PRESETS)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        return self


C = TypeVar("C", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). Values are parsed as JSON when they can be, else kept as strings."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


#: Largest config file read (1 MiB): configs are a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:  # a data file passed as --config by mistake
        raise ConfigError(f"config file {path} is {path.stat().st_size:,} bytes; a config file is at most "
                          f"{MAX_CONFIG_BYTES:,} (is it a data file? data goes to --data)")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        if path.suffix == ".json":
            return json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise ConfigError(f"cannot read config file {path} ({reason})") from err
    raise ConfigError(f"config file {path} must end in .toml or .json")


def merge(base: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``base[k0][k1]... = value``, creating nested dicts on the way."""
    node = base
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Recursively merge ``update`` into ``base`` (sections merge, values replace)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value


def build(cls: type[C], data: dict[str, Any]) -> C:
    """Validate ``data`` as ``cls``; a failure becomes a `ConfigError` naming each bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or cls.__name__}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid configuration ({problems})") from None


def load_config(
    cls: type[C], file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), **base: Any
) -> C:
    """``cls`` from ``base`` values, then the file, then ``key=value`` overrides (highest priority)."""
    data: dict[str, Any] = dict(base)
    if file is not None:
        deep_update(data, load_file(file))
    for item in overrides:
        keys, value = parse_override(item)
        merge(data, keys, value)
    return build(cls, data)
