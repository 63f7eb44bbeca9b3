"""What a saved denoiser needs to be sampled and evaluated exactly as it was trained.

Stored in every model directory's ``config.json`` under ``"run"`` (`checkpoint.save_pretrained`)::

    {"time_conditioned": false, "schedule": {"eps": 0.001}, "domain": "chars",
     "domain_settings": {...}, "tokenizer": {"vocab_size": 28, "mask_id": 27, "sha256": "..."}}

`sample`, `eval` and `train` (for its teacher) read these instead of trusting flags: a time-conditioned
model sampled with sigma = 0, or with another schedule's eps, gives other samples silently. Models
saved before this record existed are read through `run_settings_of` from the fields they did save.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from pydantic import Field

from discdistill.config import ScheduleConfig, StrictModel, build
from discdistill.errors import ModelMismatchError
from discdistill.interfaces import Domain, Tokenizer

RUN_KEY = "run"


class TokenizerIdentity(StrictModel):
    """A tokenizer named by what it does: its sizes and a hash of every id's decoding."""

    vocab_size: int
    mask_id: int
    sha256: str


class RunSettings(StrictModel):
    """Everything besides weights and architecture that changes what sampling or evaluation computes."""

    time_conditioned: bool = Field(False, description="The denoiser is given sigma_t (otherwise sigma = 0).")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    domain: str | None = Field(None, description="The domain the model was trained for (None: unknown).")
    domain_settings: dict[str, Any] = Field(default_factory=dict, description="That domain's settings.")
    tokenizer: TokenizerIdentity | None = None


def tokenizer_identity(tokenizer: Tokenizer) -> TokenizerIdentity:
    """sha256 over the decoding of each non-mask id: equal hashes mean the same id -> symbol map."""
    digest = hashlib.sha256(f"{tokenizer.vocab_size}:{tokenizer.mask_id}".encode())
    for token in range(tokenizer.vocab_size):
        if token != tokenizer.mask_id:
            digest.update(b"\x00" + repr(tokenizer.decode([token])).encode())
    return TokenizerIdentity(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, sha256=digest.hexdigest())


def domain_run_settings(domain: Domain, *, time_conditioned: bool, schedule: ScheduleConfig) -> RunSettings:
    return RunSettings(time_conditioned=time_conditioned, schedule=schedule, domain=domain.name,
                       domain_settings=domain.settings.model_dump(mode="json"),
                       tokenizer=tokenizer_identity(domain.tokenizer()))


def run_settings_of(saved: dict[str, Any]) -> RunSettings:
    """The `RunSettings` of a parsed config.json; older files: from the training config they kept."""
    if RUN_KEY in saved:
        return build(RunSettings, saved[RUN_KEY])
    extra = saved.get("extra", {})
    training = extra.get("config") or extra.get("distill_config") or {}
    return RunSettings(time_conditioned=bool(extra.get("time_conditioned", training.get("time_conditioned", False))),
                       schedule=build(ScheduleConfig, training.get("schedule", {})), domain=extra.get("domain"))


def check_run_domain(settings: RunSettings, domain: Domain, warn: Callable[[str], None]) -> None:
    """Refuse a model whose tokenizer differs from the domain's; warn when only the domain's name differs."""
    if settings.tokenizer is not None:
        here = tokenizer_identity(domain.tokenizer())
        if settings.tokenizer.sha256 != here.sha256:
            raise ModelMismatchError(f"the model was trained with another tokenizer (domain {settings.domain!r}, "
                                     f"vocabulary {settings.tokenizer.vocab_size}) than domain {domain.name!r} has "
                                     f"(vocabulary {here.vocab_size}); use --domain {settings.domain}")
    if settings.domain is not None and settings.domain != domain.name:
        warn(f"the model was trained for domain {settings.domain!r}, not {domain.name!r} (same tokenizer)")
