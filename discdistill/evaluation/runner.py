"""`discdistill eval` as a library call: sample sets in, one `EvalReport` out.

    report = evaluate(domain, EvalConfig(steps=[8, 64], judge="smollm2"), checkpoint="runs/text")
    report.save("runs/text/eval")

A *sample set* is what one row describes: the samples of one step count (generated here, timed), or
the samples of one file written earlier by `discdistill sample` (no timing, steps as given).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from discdistill.evaluation.config import EvalConfig
from discdistill.evaluation.elbo import elbo_nll
from discdistill.evaluation.entropy import mean_entropy
from discdistill.evaluation.judges import Judge, load_judge
from discdistill.evaluation.perplexity import generative_perplexity, judge_inputs
from discdistill.evaluation.report import (
    EvalProtocol, EvalReport, EvalRow, flag_entropy, load_reference, reference_from,
)
from discdistill import plugins
from discdistill.errors import DataError
from discdistill.interfaces import Domain, MaskedDiffusionTeacher
from discdistill.runtime import resolve_device
from discdistill.run_settings import RunSettings, run_settings_of
from discdistill.workflows import generate, load_denoiser


@dataclass
class SampleSet:
    label: str
    steps: int | None
    sampler: str
    rows: list[torch.Tensor]  # one 1-D id tensor per sample (lengths may differ when read from files)
    nfe: int | None = None
    disc_passes: int | None = None
    seconds: float | None = None

    def padded(self, pad_id: int) -> torch.Tensor:
        """[K, max length] ids, short rows filled with ``pad_id`` (for `Domain.metrics`)."""
        width = max((len(r) for r in self.rows), default=0)
        out = torch.full((len(self.rows), width), pad_id, dtype=torch.long)
        for i, row in enumerate(self.rows):
            out[i, :len(row)] = row
        return out


def _bar(desc: str, total: int | None, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, leave=False, dynamic_ncols=True)


def generated_sets(domain: Domain, checkpoint: Path, model: MaskedDiffusionTeacher, run: RunSettings,
                   config: EvalConfig, device: torch.device, *, progress: bool = True) -> tuple[int, Iterator[SampleSet]]:
    """The sample length, and one timed sample set per step count of ``config.steps`` (same seed each), from
    ``model`` (loaded from ``checkpoint``, whose run settings are ``run``; RGAS reads its discriminator there)."""
    sampler = plugins.get_sampler(config.sampler, config.sampler_settings)
    step_rule = sampler.step_rule(checkpoint, device)
    batches = -(-config.num_samples // config.batch_size)

    def sets() -> Iterator[SampleSet]:
        for steps in config.steps:
            sampler.reset(step_rule)
            with _bar(f"sampling {steps} steps", config.num_samples, progress) as bar:
                result = generate(model, config.sampling(steps), device=device, run=run,
                                  step_rule=step_rule, initial_state=domain.initial_state,
                                  forbidden_tokens=domain.forbidden_tokens(), on_batch=bar.update)
            disc = sampler.extra_passes(step_rule) // batches
            yield SampleSet(f"{steps} steps", steps, config.sampler, list(result.ids), result.nfe, disc,
                            result.seconds)

    return config.seq_len or model.seq_len, sets()


def read_sets(domain: Domain, paths: Sequence[Path], steps: Sequence[int | None]) -> list[SampleSet]:
    """Sample sets from files `discdistill sample` wrote; ids are the re-encoded domain objects."""
    tokenizer = domain.tokenizer()
    sets = []
    for path, step in zip(paths, steps, strict=True):
        rows = [torch.tensor(tokenizer.encode(obj), dtype=torch.long) for obj in domain.read_samples(Path(path))]
        if not rows or not any(len(row) for row in rows):
            raise DataError(f"{path} holds no samples; give a file written by `discdistill sample`")
        sets.append(SampleSet(Path(path).name, step, "file", rows))
    return sets


def score_set(sample_set: SampleSet, domain: Domain, judge: Judge | None, reference: torch.Tensor,
              config: EvalConfig, *, progress: bool = True) -> EvalRow:
    """The row of one sample set: judge perplexity, entropy, speed, the domain's metrics."""
    tokenizer = domain.tokenizer()
    row = EvalRow(label=sample_set.label, steps=sample_set.steps, sampler=sample_set.sampler,
                  num_samples=len(sample_set.rows), entropy=mean_entropy(sample_set.rows), nfe=sample_set.nfe,
                  disc_passes=sample_set.disc_passes, seconds=sample_set.seconds)
    if sample_set.seconds:
        row.tokens_per_s = sum(len(r) for r in sample_set.rows) / sample_set.seconds
    if judge is not None:
        texts, ended = judge_inputs(tokenizer, sample_set.rows)
        with _bar(f"judging {sample_set.label}", None, progress) as bar:
            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = generative_perplexity(judge, texts, ended, batch_size=config.judge_batch_size,
                                           progress=advance)
        row.gen_ppl, row.judge_nll_per_token, row.judge_tokens = (result.perplexity, result.nll_per_token,
                                                                  result.total_tokens)
    pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, tokenizer.mask_id) if i is not None)
    row.metrics = {k: float(v) for k, v in domain.metrics(sample_set.padded(pad_id), reference).items()}
    return row


def checkpoint_elbo(model: MaskedDiffusionTeacher, run: RunSettings, blocks: torch.Tensor, batch_size: int) -> float:
    """A loaded checkpoint's held-out ELBO bound (nats per token) on ``blocks``, with its own run settings."""
    return elbo_nll(model, blocks, time_conditioned=run.time_conditioned, batch_size=batch_size, eps=run.schedule.eps)


def evaluate(domain: Domain, config: EvalConfig, *, checkpoint: str | Path | None = None,
             samples: Sequence[str | Path] = (), reference_file: str | Path | None = None,
             out_dir: str | Path | None = None, progress: bool = True) -> EvalReport:
    """Generate (from ``checkpoint``) or read (``samples``) each sample set, judge it, and report.

    With ``out_dir``, generated samples are written there in the domain's format (so they can be
    re-evaluated with ``--samples``). Entropy is compared with the row with the most steps, or with
    that row of ``reference_file`` (a previous eval.json).
    """
    if (checkpoint is None) == (not samples):
        raise ValueError("give exactly one of checkpoint and samples")
    device = resolve_device(config.device)
    judge_spec = config.judge or domain.default_judge
    judge = load_judge(judge_spec, device, progress=progress)
    if samples:
        steps: list[int | None] = list(config.steps) if len(config.steps) == len(samples) else [None] * len(samples)
        sets: Iterator[SampleSet] = iter(read_sets(domain, [Path(p) for p in samples], steps))
        seq_len = config.seq_len or domain.default_seq_len
        run = None
    else:
        model, saved = load_denoiser(checkpoint, domain, device)
        run = run_settings_of(saved)
        seq_len, sets = generated_sets(domain, Path(checkpoint), model, run, config, device, progress=progress)
    reference = domain.dataset("validation", seq_len, config.data)
    elbo = None
    if checkpoint is not None and config.elbo_blocks > 0:
        elbo = checkpoint_elbo(model, run, reference[:config.elbo_blocks], config.batch_size)
    rows = []
    for sample_set in sets:
        if out_dir is not None and sample_set.seconds is not None:
            metadata = {"checkpoint": str(checkpoint), "steps": sample_set.steps, "sampler": sample_set.sampler,
                        "seed": config.seed, "precision": config.precision, "noise_removal": config.noise_removal}
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            name = f"samples-{sample_set.steps}steps-{sample_set.sampler}{domain.sample_suffix}"
            domain.write_samples(domain.decode_samples(torch.stack(sample_set.rows)), Path(out_dir) / name, metadata)
        rows.append(score_set(sample_set, domain, judge, reference, config, progress=progress))
    entropy_ref = (load_reference(reference_file, config.entropy_tolerance) if reference_file is not None
                   else reference_from(rows, "this run", config.entropy_tolerance))
    protocol = EvalProtocol(
        domain=domain.name, judge=judge.name if judge is not None else "none", num_samples=min(r.num_samples for r in rows),
        seq_len=None if samples else seq_len, steps=[r.steps for r in rows],
        sampler="file" if samples else config.sampler, precision=config.precision,
        noise_removal=config.noise_removal, seed=None if samples else config.seed,
        checkpoint=None if checkpoint is None else str(checkpoint), samples_files=[str(p) for p in samples],
        device=str(device), torch_version=torch.__version__,
        discdistill_version=importlib.metadata.version("discdistill"), metrics_definition=domain.metrics_protocol(),
        elbo_nll=elbo, elbo_blocks=None if elbo is None else min(config.elbo_blocks, len(reference)),
        domain_settings=domain.settings.model_dump(mode="json"),
        time_conditioned=None if run is None else run.time_conditioned,
        schedule_eps=None if run is None else run.schedule.eps)
    return EvalReport(protocol=protocol, rows=flag_entropy(rows, entropy_ref), reference=entropy_ref)
