"""What `discdistill eval` writes: the protocol and one row per sample set, as JSON and markdown.

The protocol travels with the numbers (method.md §4): a perplexity without its judge, sample count,
length, steps, sampler, precision, noise removal and seed is not a result. Rows whose entropy differs
from a named reference row by more than the tolerance (2%) are flagged: at unequal entropy a lower
perplexity may only mean less diverse samples.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from discdistill.config import StrictModel
from discdistill.diffusion import nats_to_bits
from discdistill.errors import DataError
from discdistill.storage import atomic_write_bytes

#: Default relative entropy difference above which a row is flagged.
ENTROPY_TOLERANCE = 0.02
REPORT_JSON = "eval.json"
REPORT_MD = "eval.md"


class ReportModel(StrictModel):
    """Non-finite numbers (a metric of an empty set) are written as the strings "NaN"/"Infinity", which
    read back as floats; plain JSON has no nan, and pydantic's default (null) would not read back.
    Unlike settings, measurements may be non-finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, ser_json_inf_nan="strings", allow_inf_nan=True)


class EvalProtocol(ReportModel):
    """How the numbers were made. Printed above the table and stored with it."""

    domain: str
    judge: str = Field(description="Judge that scored the samples ('none': no perplexity).")
    num_samples: int
    seq_len: int | None = Field(description="Generated length (None when reading sample files).")
    steps: list[int | None]
    sampler: str
    precision: str
    noise_removal: str
    seed: int | None
    checkpoint: str | None
    samples_files: list[str] = Field(default_factory=list)
    device: str
    torch_version: str
    discdistill_version: str
    eos_rule: str = "tokens before the first EOS plus that EOS are scored; the rest is ignored"
    aggregation: str = "token-weighted: exp(total NLL / total scored tokens) over all samples"
    entropy_definition: str = "mean over samples of the unigram entropy (nats) of each sample's ids"
    metrics_definition: str = Field("", description="The domain's own definition of its metrics (Domain.metrics_protocol).")
    elbo_nll: float | None = Field(None, description="Held-out ELBO bound of the checkpoint, nats per token.")
    elbo_blocks: int | None = Field(None, description="Reference blocks the ELBO bound was estimated on.")
    domain_settings: dict[str, Any] = Field(default_factory=dict, description="The domain's settings used.")
    time_conditioned: bool | None = Field(None, description="The checkpoint's time conditioning (from its run settings).")
    schedule_eps: float | None = Field(None, description="The checkpoint's log-linear schedule eps.")

    def lines(self) -> list[str]:
        steps = ", ".join("?" if s is None else str(s) for s in self.steps)
        source = self.checkpoint if self.checkpoint is not None else ", ".join(self.samples_files)
        settings = ", ".join(f"{k}={v!r}" for k, v in sorted(self.domain_settings.items())) or "defaults"
        model = ("" if self.time_conditioned is None else
                 f"; model: time conditioned {self.time_conditioned}, schedule eps {self.schedule_eps:g}")
        return [
            f"domain {self.domain} (settings: {settings}); source {source}{model}",
            f"judge: {self.judge}",
            f"samples {self.num_samples} per row, length {self.seq_len or 'as read'}, steps {steps}, "
            f"sampler {self.sampler}, precision {self.precision}, noise removal {self.noise_removal}, "
            f"seed {self.seed}",
            f"perplexity: {self.aggregation}; {self.eos_rule}",
            f"entropy: {self.entropy_definition}",
            f"device {self.device}, torch {self.torch_version}, discdistill {self.discdistill_version}",
        ] + ([f"metrics: {self.metrics_definition}"] if self.metrics_definition else []) + (
            [f"held-out likelihood bound of the checkpoint (MDLM ELBO, {self.elbo_blocks} reference blocks, one "
             f"antithetic t each): {self.elbo_nll:.4f} nats/token = {nats_to_bits(self.elbo_nll):.4f} bits/token"]
            if self.elbo_nll is not None else [])


class EvalRow(ReportModel):
    """One sample set (a step count, or a samples file)."""

    label: str
    steps: int | None
    sampler: str
    num_samples: int
    entropy: float
    gen_ppl: float | None = None
    judge_nll_per_token: float | None = None
    judge_tokens: int | None = None
    nfe: int | None = Field(None, description="Denoiser passes per sample.")
    disc_passes: int | None = Field(None, description="Discriminator forwards + backwards per batch (RGAS).")
    seconds: float | None = Field(None, description="Wall time of generation, all samples.")
    tokens_per_s: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="The domain's metrics.")
    entropy_rel_diff: float | None = Field(None, description="(entropy - reference) / reference.")
    entropy_flag: bool = False


class EntropyReference(ReportModel):
    """The row entropies are compared against."""

    label: str
    entropy: float
    source: str = Field(description="'this run', or the eval.json it was read from.")
    tolerance: float = ENTROPY_TOLERANCE


class EvalReport(ReportModel):
    protocol: EvalProtocol
    rows: list[EvalRow]
    reference: EntropyReference | None = None

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write OUT/eval.json and OUT/eval.md atomically; return both paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
        atomic_write_bytes(json_path, (self.model_dump_json(indent=2) + "\n").encode())
        atomic_write_bytes(md_path, self.markdown().encode())
        return json_path, md_path

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """Read an eval.json (a file or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_JSON
        try:
            return cls.model_validate_json(path.read_text())
        except OSError as err:
            raise DataError(f"cannot read eval report {path}: {err.strerror}") from None
        except ValidationError as err:
            raise DataError(f"{path} is not an eval.json written by `discdistill eval` "
                            f"({err.error_count()} problems, first: {err.errors()[0]['msg']})") from None

    def markdown(self) -> str:
        """The protocol as a list, then the table; flagged entropies carry a '(!)'."""
        metric_names = sorted({name for row in self.rows for name in row.metrics})
        head = ["sample set", "steps", "sampler", "gen PPL", "entropy", "vs ref", "NFE", "disc passes",
                "seconds", "tokens/s", *metric_names]
        lines = [f"- {line}" for line in self.protocol.lines()]
        if self.reference is not None:
            ref = self.reference
            lines.append(f"- entropy reference: {ref.label} ({ref.source}), {ref.entropy:.4f} nats; "
                         f"(!) marks a difference above {ref.tolerance:.0%}")
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            entropy = f"{row.entropy:.4f}" + (" (!)" if row.entropy_flag else "")
            cells = [row.label, _cell(row.steps), row.sampler, _cell(row.gen_ppl, ".2f"), entropy,
                     _cell(row.entropy_rel_diff, "+.1%"), _cell(row.nfe), _cell(row.disc_passes),
                     _cell(row.seconds, ".2f"), _cell(row.tokens_per_s, ".0f"),
                     *(_cell(row.metrics.get(name), ".4g") for name in metric_names)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _cell(value: float | int | None, fmt: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def reference_row(rows: list[EvalRow]) -> EvalRow:
    """The default reference: the row with the most steps (the teacher at its most steps), else the first."""
    assert rows, "no rows"
    return max(rows, key=lambda r: -1 if r.steps is None else r.steps)


def flag_entropy(rows: list[EvalRow], reference: EntropyReference) -> list[EvalRow]:
    """Rows with ``entropy_rel_diff`` set and ``entropy_flag`` where |diff| > tolerance."""
    assert reference.entropy > 0, "the reference entropy must be positive"
    flagged = []
    for row in rows:
        diff = (row.entropy - reference.entropy) / reference.entropy
        flagged.append(row.model_copy(update={"entropy_rel_diff": diff,
                                              "entropy_flag": abs(diff) > reference.tolerance}))
    return flagged


def reference_from(rows: list[EvalRow], source: str, tolerance: float = ENTROPY_TOLERANCE) -> EntropyReference:
    row = reference_row(rows)
    return EntropyReference(label=row.label, entropy=row.entropy, source=source, tolerance=tolerance)


def load_reference(path: str | Path, tolerance: float = ENTROPY_TOLERANCE) -> EntropyReference:
    """The reference row (most steps) of a previous run's eval.json."""
    report = EvalReport.load(path)
    if not report.rows:
        raise DataError(f"{path} has no rows to compare against")
    return reference_from(report.rows, str(path), tolerance)


__all__ = ["EvalProtocol", "EvalRow", "EvalReport", "EntropyReference", "flag_entropy", "reference_row",
           "reference_from", "load_reference", "ENTROPY_TOLERANCE", "REPORT_JSON", "REPORT_MD"]
