"""Options and helpers the `discdistill` commands share (discdistill.cli)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from discdistill.config import parse_override

CONFIG_HELP = "TOML or JSON file with configuration values (see docs/cli.md)."
SET_HELP = "Override one configuration value, e.g. --set lr=3e-4 --set model_overrides.dropout=0.1. Repeatable."


def key_values(items: tuple[str, ...]) -> dict[str, Any]:
    """``("a=1", "b=x")`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items:
        keys, value = parse_override(item)
        out[".".join(keys)] = value
    return out


def domain_option(func: Callable) -> Callable:
    """``--domain NAME`` and ``--domain-set KEY=VALUE``; the command receives ``domain_settings`` (a dict)."""

    @functools.wraps(func)
    def wrapper(*args: Any, domain_sets: tuple[str, ...], **kwargs: Any) -> Any:
        return func(*args, domain_settings=key_values(domain_sets), **kwargs)

    wrapper = click.option("--domain-set", "domain_sets", multiple=True, metavar="KEY=VALUE",
                           help="One of the domain's settings, e.g. --domain-set length_mode=sampled (protein); "
                                "`discdistill domains` lists them. Stored in checkpoints and reports.")(wrapper)
    return click.option("--domain", required=True, metavar="NAME",
                        help="Domain plugin to use (list them with `discdistill domains`).")(wrapper)


def config_options(func: Callable) -> Callable:
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(func)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP)(func)


def overwrite_option(func: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True,
                        help="Replace the run already in --out (it is deleted only once the new run's first "
                             "checkpoint is written). Without it or --resume, an existing run is refused.")(func)


def sampling_options(func: Callable) -> Callable:
    """Options of the sampling loop shared by `sample` and `eval`."""
    func = click.option("--noise-removal", type=click.Choice(["sample", "argmax"]), default=None,
                        help="How the last step fills positions still masked [sample].")(func)
    func = click.option("--precision", type=click.Choice(["float64", "float32"]), default=None,
                        help="Categorical sampling precision [float64]; float32 truncates the tail, lowers "
                             "entropy (and flatters perplexity).")(func)
    return click.option("--seq-len", type=int, default=None, help="Sample length [the model's].")(func)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def explicit(**values: Any) -> dict[str, Any]:
    """Options the user actually gave (click passes None for the others)."""
    return {k: v for k, v in values.items() if v is not None}


def as_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]
