"""Samplers: the step rules `sample`, `eval` and the benchmarks can use, registered by name.

A `Sampler` builds its step rule for a checkpoint (RGAS reads the run's discriminator there), with its
own validated ``Settings``, and reports what it adds to the N denoiser passes in denoiser-forward
equivalents (a discriminator forward or backward counts one). Two are built in (``ancestral``,
``rgas``); a plugin adds its own through the ``discdistill_samplers`` hook (discdistill.plugins)::

    @hookimpl
    def discdistill_samplers():
        return [MySampler]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from discdistill.config import StrictModel
from discdistill.distill.config import RGASConfig
from discdistill.interfaces import NoSettings
from discdistill.sampling import StepRule, ancestral_step


class Sampler(ABC):
    """One way to take a sampling step; built once per command with validated settings."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Settings: ClassVar[type[StrictModel]] = NoSettings

    def __init__(self, settings: StrictModel | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def step_rule(self, checkpoint: Path, device: torch.device) -> StepRule:
        """The rule the sampling loop calls at each step, for the model at ``checkpoint``."""

    def reset(self, rule: StepRule) -> None:
        """Zero the rule's pass counters (before a timed run)."""

    def extra_passes(self, rule: StepRule) -> int:
        """Network passes the rule added since `reset`, in denoiser-forward equivalents."""
        return 0


class AncestralSampler(Sampler):
    name = "ancestral"
    description = "the plain ancestral step (method.md §1): N denoiser passes, nothing else"

    def step_rule(self, checkpoint: Path, device: torch.device) -> StepRule:
        return ancestral_step


class RGASSampler(Sampler):
    name = "rgas"
    description = "reward-guided ancestral sampling with the run's discriminator (method.md §3)"
    Settings = RGASConfig

    def step_rule(self, checkpoint: Path, device: torch.device) -> StepRule:
        from discdistill.distill.rgas import load_rgas

        return load_rgas(checkpoint, self.settings, map_location=device)

    def reset(self, rule: StepRule) -> None:
        rule.reset_counts()

    def extra_passes(self, rule: StepRule) -> int:
        return rule.disc_passes


BUILTIN_SAMPLERS: tuple[type[Sampler], ...] = (AncestralSampler, RGASSampler)
