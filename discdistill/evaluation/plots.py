"""Optional plots (``pip install "discdistill[plot]"``): quality against NFE and wall time, training curves.

matplotlib is imported inside `_pyplot` only, so the rest of the library never needs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from discdistill.errors import DataError, DiscdistillError
from discdistill.evaluation.report import EvalReport, EvalRow


class PlotError(DiscdistillError):
    """Plotting needs matplotlib (the ``plot`` extra)."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError('plots need matplotlib: pip install "discdistill[plot]"') from None
    return plt


def _quality(row: EvalRow) -> float | None:
    """Generative perplexity when judged, else nothing to plot."""
    return row.gen_ppl if row.gen_ppl is not None and math.isfinite(row.gen_ppl) else None


def plot_quality(reports: Sequence[EvalReport], labels: Sequence[str], out: str | Path) -> Path:
    """Two panels, one line per report: gen PPL against NFE, and against wall seconds (log-log)."""
    assert len(reports) == len(labels), "one label per report"
    plt = _pyplot()
    fig, (by_nfe, by_time) = plt.subplots(1, 2, figsize=(10, 4))
    for report, label in zip(reports, labels):
        rows = [r for r in report.rows if _quality(r) is not None]
        nfe = [(r.nfe, r.gen_ppl) for r in rows if r.nfe is not None]
        wall = [(r.seconds, r.gen_ppl) for r in rows if r.seconds is not None]
        if nfe:
            by_nfe.plot(*zip(*sorted(nfe)), marker="o", label=label)
        if wall:
            by_time.plot(*zip(*sorted(wall)), marker="o", label=label)
    judge = ", ".join(sorted({r.protocol.judge for r in reports}))
    for axis, xlabel in ((by_nfe, "NFE (denoiser passes)"), (by_time, "wall seconds (all samples)")):
        axis.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="generative perplexity")
        axis.grid(True, which="both", alpha=0.3)
        if axis.lines:  # a report without timings (sample files) draws nothing here
            axis.legend()
    fig.suptitle(f"judge: {judge}", fontsize=9)
    return _save(fig, plt, out)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (training log)."""
    path = Path(path)
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read training metrics {path}: {err}") from None


def plot_training(records: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """One panel per numeric field logged (loss, val_nll, ...) against ``step``."""
    fields = sorted({k for r in records for k, v in r.items()
                     if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not fields:
        raise DataError("the metrics file has no numeric fields to plot")
    plt = _pyplot()
    cols = min(3, len(fields))
    fig, axes = plt.subplots(-(-len(fields) // cols), cols, figsize=(4 * cols, 3 * -(-len(fields) // cols)),
                             squeeze=False)
    for axis, field in zip(axes.flat, fields):
        points = [(r["step"], r[field]) for r in records if field in r and "step" in r]
        axis.plot(*zip(*points), marker="." if len(points) < 50 else None)
        axis.set(title=field, xlabel="step")
        axis.grid(True, alpha=0.3)
    for axis in list(axes.flat)[len(fields):]:
        axis.set_visible(False)
    return _save(fig, plt, out)


def _save(fig: Any, plt: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
