"""`discdistill eval` configuration, validated once at the edge (see `discdistill.config`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from discdistill.config import SamplingConfig, StrictModel
from discdistill.evaluation.report import ENTROPY_TOLERANCE


class EvalConfig(StrictModel):
    """What to generate (or read), how to judge it, what to compare entropy against."""

    steps: list[int] = Field(default_factory=lambda: [8, 16, 32],
                             description="Step counts (NFE) to evaluate, one row each; '8,16,32' on the command line.")
    sampler: str = Field("ancestral", min_length=1, description="A registered sampler: ancestral, rgas, or a plugin's.")
    judge: str | None = Field(None, description="smollm2, gpt2-large, none, a folder, a .gguf file or a hub id; "
                                                "default: the domain's (text: smollm2, others: none).")
    num_samples: int = Field(256, gt=0, description="Samples per row (the protocol asks for at least 256).")
    batch_size: int = Field(16, gt=0, description="Samples generated at once.")
    judge_batch_size: int = Field(8, gt=0, description="Sequences per judge forward pass.")
    seq_len: int | None = Field(None, gt=0, description="Sample length; default the model's.")
    precision: Literal["float64", "float32"] = "float64"
    noise_removal: Literal["sample", "argmax"] = "sample"
    cache: bool | None = Field(None, description="Per-row logits cache; None: on when steps > seq_len (exact).")
    t_min: float = Field(1e-5, gt=0.0, lt=1.0)
    seed: int = 0
    device: str = "auto"
    data: str | None = Field(None, description="Reference data for the domain's metrics (default: embedded).")
    elbo_blocks: int = Field(256, ge=0, description="Reference blocks on which the checkpoint's held-out ELBO "
                             "bound (nats and bits per token) is estimated; 0: skip it.")
    entropy_tolerance: float = Field(ENTROPY_TOLERANCE, gt=0.0,
                                     description="Relative entropy difference that flags a row.")
    sampler_settings: dict[str, Any] = Field(default_factory=dict, description="The sampler's own settings, e.g. "
                                             "candidates=2 for rgas (validated by the sampler).")

    @field_validator("steps", mode="before")
    @classmethod
    def _parse_steps(cls, value: Any) -> Any:
        """'8,16,32' (the command line) or 8 -> [8, 16, 32]."""
        if isinstance(value, str):
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"steps must be comma-separated integers such as 8,16,32, not {value!r}") from None
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("steps")
    @classmethod
    def _check_steps(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1:
            raise ValueError("give at least one step count, each >= 1")
        return value

    def sampling(self, steps: int) -> SamplingConfig:
        """The sampling loop's configuration for one row."""
        return SamplingConfig(steps=steps, num_samples=self.num_samples, batch_size=self.batch_size,
                              seq_len=self.seq_len, precision=self.precision, noise_removal=self.noise_removal,
                              cache=self.cache, t_min=self.t_min, seed=self.seed)
