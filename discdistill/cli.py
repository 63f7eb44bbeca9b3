"""The `discdistill` command line: thin click commands over `discdistill.workflows`.

Every command takes ``--config FILE`` (TOML or JSON) and repeatable ``--set key=value`` overrides
(dotted keys for nested fields); explicit options such as ``--steps`` win over both.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from discdistill import plugins
from discdistill.config import PretrainConfig, SamplingConfig, load_config
from discdistill.errors import DiscdistillError
from discdistill.training import resolve_device

CONFIG_HELP = "TOML or JSON file with configuration values (see docs/cli.md)."
SET_HELP = "Override one configuration value, e.g. --set lr=3e-4 --set model_overrides.dropout=0.1. Repeatable."


def domain_option(func: Callable) -> Callable:
    return click.option("--domain", required=True, metavar="NAME",
                        help="Domain plugin to use (list them with `discdistill domains`).")(func)


def config_options(func: Callable) -> Callable:
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(func)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP)(func)


def explicit(**values: Any) -> dict[str, Any]:
    """Options the user actually gave (click passes None for the others)."""
    return {k: v for k, v in values.items() if v is not None}


def as_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="discdistill")
def cli() -> None:
    """Distil masked discrete diffusion models into few-step students (DiDi-Instruct).

    \b
    Typical session on the embedded text corpus (CPU, minutes):
      discdistill pretrain --domain text --out runs/text
      discdistill sample   --domain text --checkpoint runs/text --steps 64
    """


@cli.command()
def domains() -> None:
    """List the installed domains and the package that provides each."""
    entries = plugins.installed_domains()
    if not entries:
        click.echo("no domains installed (pip install discdistill-text, or write a plugin: docs/plugins.md)")
        return
    width = max(len(name) for name in entries)
    for name, entry in sorted(entries.items()):
        click.echo(f"{name:<{width}}  {entry.package:<24}  {entry.domain_class.description}")


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
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_options
def pretrain(domain: str, out_dir: Path | None, data: str | None, resume: bool, quiet: bool,
             config_file: str | None, overrides: tuple[str, ...], **options: Any) -> None:
    """Pre-train a masked-diffusion teacher with the MDLM ELBO.

    Prints validation NLL per token (nats) and its perplexity bound as it goes; writes the teacher
    to OUT/model, resumable state to OUT/checkpoint and metrics to OUT/metrics.jsonl. Ctrl-C saves
    a checkpoint first.
    """
    from discdistill.workflows import pretrain_domain

    config = load_config(PretrainConfig, config_file, [*overrides, *as_overrides(explicit(**options))])
    target = plugins.get_domain(domain)
    out_dir = out_dir or Path("runs") / domain
    model_dir = pretrain_domain(target, config, out_dir, source=data, resume=resume, progress=not quiet)
    click.echo(f"teacher saved to {model_dir}")


@cli.command()
@domain_option
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Model directory, or a run directory holding student/ or model/.")
@click.option("--steps", type=int, default=None, help="Denoiser passes (NFE) per sample.")
@click.option("--num-samples", type=int, default=None, help="How many samples to write.")
@click.option("--batch-size", type=int, default=None, help="Samples generated at once.")
@click.option("--seq-len", type=int, default=None, help="Sample length (default: the model's).")
@click.option("--precision", type=click.Choice(["float64", "float32"]), default=None,
              help="Categorical sampling precision. float32 truncates the tail and lowers entropy.")
@click.option("--noise-removal", type=click.Choice(["sample", "argmax"]), default=None,
              help="How the last step fills positions still masked.")
@click.option("--cache/--no-cache", default=None, help="Reuse logits of unchanged rows (many-step teachers).")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: CHECKPOINT/samples-<steps>steps.<domain format>).")
@config_options
def sample(domain: str, checkpoint: Path, device: str, out_file: Path | None, config_file: str | None,
           overrides: tuple[str, ...], **options: Any) -> None:
    """Generate samples with a teacher or student and write them in the domain's format.

    Prints samples/s and tokens/s (wall time of generation, decoding excluded).
    """
    from discdistill.workflows import generate, load_denoiser

    config = load_config(SamplingConfig, config_file, [*overrides, *as_overrides(explicit(**options))])
    target = plugins.get_domain(domain)
    torch_device = resolve_device(device)
    model, saved = load_denoiser(checkpoint, target, torch_device)
    time_conditioned = bool(saved.get("extra", {}).get("config", {}).get("time_conditioned", False))
    result = generate(model, config, device=torch_device, time_conditioned=time_conditioned,
                      initial_state=target.initial_state)
    out_file = out_file or checkpoint / f"samples-{config.steps}steps{target.sample_suffix}"
    metadata = {"checkpoint": str(checkpoint), "steps": config.steps, "sampler": "ancestral", "seed": config.seed,
                "precision": config.precision, "noise_removal": config.noise_removal}
    written = target.write_samples(target.decode_samples(result.ids), out_file, metadata)
    speed = result.throughput()
    click.echo(f"{len(result.ids)} samples x {result.ids.shape[1]} tokens, {result.nfe} denoiser passes each, "
               f"in {result.seconds:.2f} s: {speed['samples_per_s']:.2f} samples/s, "
               f"{speed['tokens_per_s']:.0f} tokens/s -> {written}")


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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line and exit 1 (no traceback)."""
    try:
        cli.main(args=argv, prog_name="discdistill", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except DiscdistillError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
