"""The library calls behind each CLI command: domain + validated config in, files and numbers out.

Kept separate from `cli` so that notebooks and tests can run the same workflows without click.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from discdistill import plugins
from discdistill.checkpoint import load_pretrained, read_pretrained_config
from discdistill.config import PretrainConfig, SamplingConfig, build
from discdistill.diffusion import LogLinearSchedule
from discdistill.errors import CheckpointError, ModelMismatchError
from discdistill.distributed import world_from_env
from discdistill.interfaces import Domain, MaskedDiffusionTeacher
from discdistill.rundir import RunDirectory
from discdistill.run_settings import RunSettings, check_run_domain, domain_run_settings, run_settings_of
from discdistill.sampling import StepRule, ancestral_step, sample
from discdistill.runtime import resolve_device
from discdistill.training import MODEL_DIR, PRETRAIN_ARTEFACTS, pretrain


def pretrain_domain(domain: Domain, config: PretrainConfig, out_dir: Path, *, source: str | None = None,
                    resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Build the domain's blocks and pre-train a teacher on them; return the saved model directory."""
    RunDirectory(out_dir, PRETRAIN_ARTEFACTS, resume=resume, overwrite=overwrite,
                 writer=world_from_env()[0] == 0).preflight()  # before reading a corpus
    seq_len = config.seq_len or domain.default_seq_len
    train = domain.dataset("train", seq_len, source)
    validation = domain.dataset("validation", seq_len, source)
    tokenizer = domain.tokenizer()
    run = domain_run_settings(domain, time_conditioned=config.time_conditioned, schedule=config.schedule)
    return pretrain(config, train, validation, out_dir, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                    resume=resume, overwrite=overwrite, progress=progress, run_settings=run,
                    extra={"domain": domain.name, "data": source or "embedded", "seq_len": seq_len})


#: Sub-directories of a run directory that hold a loadable model, most useful first.
MODEL_SUBDIRS = ("student", MODEL_DIR)


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a run directory holding ``student/`` or ``model/``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for sub in MODEL_SUBDIRS:
        if (path / sub / "config.json").is_file():
            return path / sub
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(f"{path} holds no model: expected config.json, or a run directory with "
                          f"{' or '.join(s + '/' for s in MODEL_SUBDIRS)}")


SHIPPED_PREFIX = "shipped:"


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` names a plugin's shipped model (``shipped:NAME``): outputs then go under runs/."""
    return str(path).startswith(SHIPPED_PREFIX)


def resolve_checkpoint(path: str | Path, domain: Domain) -> Path:
    """``shipped:NAME`` -> the directory of the domain's shipped model NAME; any other path unchanged."""
    if not is_shipped(path):
        return Path(path)
    name, shipped = str(path)[len(SHIPPED_PREFIX):], domain.shipped_models()
    if name not in shipped:
        listing = ", ".join(f"{SHIPPED_PREFIX}{n}" for n in sorted(shipped)) or "none"
        raise CheckpointError(f"domain {domain.name!r} ships no model {name!r}; it ships: {listing}")
    return shipped[name]


def check_compatible(model: MaskedDiffusionTeacher, domain: Domain, seq_len: int) -> None:
    """Refuse a model whose vocabulary, mask id or length does not fit the domain."""
    tokenizer = domain.tokenizer()
    if model.vocab_size != tokenizer.vocab_size or model.mask_id != tokenizer.mask_id:
        raise ModelMismatchError(
            f"the model has vocabulary {model.vocab_size} (mask id {model.mask_id}) but domain {domain.name!r} "
            f"has {tokenizer.vocab_size} (mask id {tokenizer.mask_id}); use a checkpoint trained on this domain")
    if seq_len > model.seq_len:
        raise ModelMismatchError(f"--seq-len {seq_len} exceeds the model's maximum length {model.seq_len}")


def load_denoiser(path: str | Path, domain: Domain, device: torch.device) -> tuple[MaskedDiffusionTeacher, dict]:
    """Load a saved denoiser for sampling (eval mode) and check it against the domain."""
    model_dir = resolve_model_dir(path)
    model = load_pretrained(model_dir, map_location=device).eval()
    check_compatible(model, domain, model.seq_len)
    return model, read_pretrained_config(model_dir)


def domain_for_model(name: str, overrides: dict[str, Any], path: str | Path,
                     warn: Callable[[str], None] = print) -> tuple[Domain, RunSettings]:
    """Domain ``name`` with the settings the model at ``path`` was trained with, ``overrides`` on top
    (each one that changes a trained value is warned about), and the model's `RunSettings`."""
    run = run_settings_of(read_pretrained_config(resolve_model_dir(path)))
    stored = run.domain_settings if run.domain == name else {}
    for key, value in overrides.items():
        if key in stored and stored[key] != value:
            warn(f"--domain-set {key}={value!r} differs from the {stored[key]!r} the model was trained with")
    domain = plugins.get_domain(name, {**stored, **overrides})
    check_run_domain(run, domain, warn)
    return domain, run


@dataclass
class GenerationResult:
    ids: torch.Tensor  # [K, L] on the CPU
    nfe: int  # denoiser passes per sample (per batch)
    seconds: float

    @property
    def tokens(self) -> int:
        return self.ids.numel()

    def throughput(self) -> dict[str, float]:
        return {"samples_per_s": len(self.ids) / self.seconds, "tokens_per_s": self.tokens / self.seconds}


def generate(model: MaskedDiffusionTeacher, config: SamplingConfig, *, device: torch.device,
             run: RunSettings | None = None, step_rule: StepRule = ancestral_step,
             initial_state: Any = None, forbidden_tokens: Sequence[int] = (),
             on_batch: Callable[[int], None] | None = None) -> GenerationResult:
    """``config.num_samples`` samples in batches of ``config.batch_size`` with one seeded generator.

    ``initial_state(batch, seq_len, generator)`` (optional) gives a partly filled start state, e.g.
    a protein domain's sampled-length prefill; ``forbidden_tokens`` are never drawn (see `sample`).
    ``on_batch(n)`` is called after each batch of n samples (progress bars). ``run``: the model's saved
    `RunSettings` (time conditioning, schedule eps; default: an MDLM-style sigma = 0 model, eps 1e-3).
    """
    run = run or RunSettings()
    time_conditioned, schedule = run.time_conditioned, LogLinearSchedule(run.schedule.eps)
    seq_len = config.seq_len or model.seq_len
    # The cache is exact; it saves forwards only when rows stay unchanged across steps (steps > length).
    cache = config.cache if config.cache is not None else (not time_conditioned and config.steps > seq_len)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batches, nfe = [], 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for start in range(0, config.num_samples, config.batch_size):
        size = min(config.batch_size, config.num_samples - start)
        z_init = initial_state(size, seq_len, generator) if initial_state is not None else None
        if z_init is not None:
            z_init = z_init.to(device)
        out = sample(model, num_samples=size, seq_len=seq_len, steps=config.steps, mask_id=model.mask_id,
                     schedule=schedule, precision=config.precision, noise_removal=config.noise_removal,
                     cache=cache, time_conditioned=time_conditioned, t_min=config.t_min,
                     generator=generator, device=device, step_rule=step_rule, z_init=z_init,
                     forbidden_tokens=forbidden_tokens)
        batches.append(out.ids.cpu())
        nfe = max(nfe, out.nfe)
        if on_batch is not None:
            on_batch(size)
    seconds = time.perf_counter() - tic
    return GenerationResult(torch.cat(batches), nfe, seconds)


#: How the default teacher of a domain is built when `train` is given none: the README's main job.
DEFAULT_TEACHER_RECIPE: dict[str, Any] = {"steps": 300, "batch_size": 16, "lr": 3e-3, "warmup_steps": 40,
                                          "eval_every": 50}


def cache_root() -> Path:
    """$DISCDISTILL_CACHE, else ~/.cache/discdistill."""
    return Path(os.environ.get("DISCDISTILL_CACHE", Path.home() / ".cache" / "discdistill"))


def resolve_teacher(domain: Domain, teacher: str | None, *, device: str, progress: bool = True,
                    say: Callable[[str], None] = print) -> Path:
    """A teacher model directory: a local path, ``hf:ID`` (imported once into the cache), or, when
    ``teacher`` is None, the domain's default teacher (pre-trained once on its embedded corpus and cached).
    """
    if teacher is not None and teacher.startswith("hf:"):
        from discdistill.mdlm_import import import_mdlm

        target = cache_root() / "teachers" / teacher[3:].replace("/", "--")
        if not (target / "config.json").is_file():
            say(f"importing {teacher[3:]} into {target}")
            import_mdlm(teacher[3:], target)
        return target
    if teacher is not None:
        return resolve_model_dir(resolve_checkpoint(teacher, domain))
    if "teacher" in domain.shipped_models():
        shipped = resolve_model_dir(domain.shipped_models()["teacher"])
        say(f"using the {domain.name} teacher shipped with its plugin ({shipped}); --teacher PATH uses another")
        return shipped
    run_dir = cache_root() / "teachers" / f"{domain.name}-default"
    if (run_dir / MODEL_DIR / "config.json").is_file():
        say(f"using the cached default teacher {run_dir / MODEL_DIR}")
        return run_dir / MODEL_DIR
    say(f"no teacher given and none cached: pre-training the default {domain.name} teacher into {run_dir} "
        f"({DEFAULT_TEACHER_RECIPE['steps']} steps on the embedded corpus; cached for next time)")
    config = build(PretrainConfig, {**DEFAULT_TEACHER_RECIPE, "device": device})
    resume = (run_dir / "checkpoint").is_dir()  # a previous attempt was interrupted: continue it
    return pretrain_domain(domain, config, run_dir, resume=resume, overwrite=not resume, progress=progress)


__all__ = ["pretrain_domain", "resolve_model_dir", "resolve_checkpoint", "check_compatible", "load_denoiser",
           "domain_for_model", "generate",
           "GenerationResult", "resolve_device", "resolve_teacher", "cache_root"]
