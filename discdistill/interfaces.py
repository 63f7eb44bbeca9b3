"""The contracts between the core and the domains.

The core never imports a plugin: it talks to a domain only through these classes.

* A `Tokenizer` maps domain objects (a string, a protein) to token ids and back, and names its
  special ids. ``vocab_size`` counts every id *including* the mask id.
* A denoiser (`MaskedDiffusionTeacher`, and the `Student` distilled from it) is
  ``logits = net(z, sigma)``: z is a LongTensor [B, L] of ids (or a float [B, L, V] of
  probabilities, used by reward-guided sampling), sigma a float [B]; logits are raw [B, L, V]
  scores over x_0. The SUBS processing (mask logit -inf, carry-over) is applied by
  `discdistill.diffusion`, never inside the network.
* A `Discriminator` is ``logits = disc(z, sigma)`` with one logit per position, [B, L].
* A `Domain` is what a plugin provides: tokenizer, data, presets, how to write samples, metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from discdistill.config import StrictModel
from discdistill.errors import DataError


class Tokenizer(ABC):
    """Maps domain objects to ids and back. ``vocab_size`` includes the mask id."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def mask_id(self) -> int: ...

    @property
    def pad_id(self) -> int | None:
        return None

    @property
    def eos_id(self) -> int | None:
        return None

    @property
    def bos_id(self) -> int | None:
        return None

    @abstractmethod
    def encode(self, obj: Any) -> list[int]:
        """Domain object -> ids (no special tokens added unless the domain's format needs them)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> Any:
        """Ids -> domain object. Must invert `encode` exactly on valid input."""


class MaskedDiffusionTeacher(nn.Module, ABC):
    """A denoiser: raw x_0 logits [B, L, V] from a (partly) masked sequence z and noise level sigma."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """The longest sequence the network accepts (rotary tables etc. are sized for it)."""

    @property
    @abstractmethod
    def mask_id(self) -> int: ...

    @abstractmethod
    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def logits_at(self, z: torch.Tensor, sigma: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] at the n positions where ``where`` [B, L] is true (row-major). Override when the
        network can skip the other positions (the DiT runs its output layer only there)."""
        return self(z, sigma)[where]


class Student(MaskedDiffusionTeacher):
    """A few-step denoiser distilled from a teacher; keeps an exponential moving average of itself."""

    @abstractmethod
    def ema_model(self) -> MaskedDiffusionTeacher:
        """The EMA copy, which is what sampling uses."""

    @abstractmethod
    def update_ema(self, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * current."""


class Discriminator(nn.Module, ABC):
    """Density-ratio estimator: per-position logits [B, L] that z came from the data (not the student)."""

    @abstractmethod
    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


class EmbeddingDiscriminator(Discriminator):
    """A discriminator whose input is a token embedding: soft input p [B, L, V] enters only as p @ E.

    Reward-guided sampling then takes its gradient in embedding space ([B, L, hidden]) and maps it back to
    the logits in closed form, instead of differentiating through a [B, L, V] soft one-hot (the same
    gradient; with V = 50k far cheaper)."""

    @property
    @abstractmethod
    def input_embedding(self) -> torch.Tensor:
        """E [V, hidden]: the embedding of id v is E[v]; of probabilities p, p @ E."""

    @abstractmethod
    def forward_embedded(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Logits [B, L] from input embeddings x [B, L, hidden]: forward(z) = forward_embedded(embed(z))."""


class NoSettings(StrictModel):
    """The settings of a domain that has none."""


class Domain(ABC):
    """What a plugin provides. Instantiated lazily by the plugin registry, so keep __init__ cheap.

    A domain's behaviour is set by its ``Settings`` (a pydantic model, validated once): the command line
    passes them as ``--domain-set KEY=VALUE``, checkpoints and eval reports record them. A subclass with
    its own ``__init__`` takes ``settings`` and passes it to ``super().__init__``.
    """

    name: ClassVar[str]
    #: The domain's settings model; every field needs a default.
    Settings: ClassVar[type[StrictModel]] = NoSettings
    description: ClassVar[str] = ""
    #: Sequence length used when the user gives none.
    default_seq_len: ClassVar[int] = 128
    #: Model preset used when the user gives none.
    default_preset: ClassVar[str] = "tiny"
    #: File suffix of `write_samples` output, e.g. ".txt" or ".fasta".
    sample_suffix: ClassVar[str] = ".txt"
    #: Judge `discdistill eval` scores samples with when the user names none: "none" unless the
    #: samples are natural language ("smollm2", see `discdistill.evaluation.judges.JUDGES`).
    default_judge: ClassVar[str] = "none"

    def __init__(self, settings: StrictModel | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def tokenizer(self) -> Tokenizer: ...

    @abstractmethod
    def dataset(self, split: str, seq_len: int, source: str | None = None) -> torch.Tensor:
        """Token blocks for ``split`` ("train" or "validation") as a LongTensor [N, seq_len].

        ``source`` is None for the embedded offline default, a local path, or a domain-specific
        identifier of the real corpus (e.g. "openwebtext"). Raise `DataError` for bad input.
        """

    def decode_samples(self, ids: torch.Tensor) -> list[Any]:
        """[B, L] ids -> domain objects (e.g. cut at the first EOS)."""
        tok = self.tokenizer()
        return [tok.decode(row.tolist()) for row in ids]

    def initial_state(self, num_samples: int, seq_len: int, generator: torch.Generator) -> torch.Tensor | None:
        """Start state [B, L] for sampling (masked positions = to generate), or None for all-mask.

        E.g. a protein domain that draws lengths from the data pre-fills the positions past each
        drawn length with EOS/PAD, so exactly that many residues are generated.
        """
        return None

    def forbidden_tokens(self) -> tuple[int, ...]:
        """Token ids the sampler must never draw at a masked position (default: none).

        E.g. a protein domain that fixes each sample's length in `initial_state` forbids EOS, PAD and
        BOS, so the masked span fills with exactly that many residues.
        """
        return ()

    @abstractmethod
    def write_samples(self, samples: list[Any], path: Path, metadata: dict[str, Any]) -> Path:
        """Write decoded samples in the domain's format; return the path written."""

    def read_samples(self, path: Path) -> list[Any]:
        """Domain objects from a file `write_samples` wrote (``discdistill eval --samples``). Optional."""
        raise DataError(f"domain {self.name!r} cannot read sample files; evaluate a --checkpoint instead")

    def metrics(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Domain-specific quality metrics of sampled ids against reference ids. Optional."""
        return {}

    def shipped_models(self) -> dict[str, Path]:
        """Models that ship with the plugin, by name, e.g. {"teacher": ..., "student": ...}. Optional.

        ``--checkpoint shipped:NAME`` (and ``--teacher shipped:NAME``) names one on the command line; `train`
        given no ``--teacher`` distils from the "teacher" one instead of pre-training a default teacher.
        """
        return {}

    def distill_defaults(self) -> dict[str, Any]:
        """`DistillConfig` values this domain's default recipe uses; a config file and ``--set`` go on top. Optional."""
        return {}

    def metrics_protocol(self) -> str:
        """One line defining the numbers `metrics` returns, printed in every eval report. Optional."""
        return ""
