"""Does the student close the teacher's step gap on real text? The chars domain's proof table.

Rows (each over ``--seeds`` sampling seeds, ``--samples`` samples per seed, L = 256, ancestral sampling,
float64 categorical draws; rows of more than 64 steps draw ``--samples-many`` samples a seed and use
the logits cache, exact for the shipped time-unconditioned teacher: a row whose state did not change
reuses its logits, so the draws have the same law):

* teacher@S for each S of ``--teacher-steps`` (default 8 and 256): the few-step failure and the
  many-step quality the student should reach; add the step count whose sampling time equals an RGAS
  row's for the equal-cost comparison;
* teacher@8 at temperature T: the cheap alternative, T chosen so that its character entropy matches
  the student's (logits / T; T found by 4 bisections in [0.7, 1] on seed 0);
* student@8 (the EMA weights of a `discdistill train --domain chars` run);
* student@8 + RGAS, one row per ``--rgas`` (RGASConfig overrides, e.g. ``h_start=0,h_end=0`` for
  re-ranking only), with the discriminator of the student's run directory; with ``--rows rgas`` alone
  the rows are added to an existing ``--out`` without drawing the others again. Each RGAS row records
  its discriminator passes per draw; its seconds per seed give the teacher step count of equal cost.

Per row: word validity, character entropy, distinct word 1/2-grams, mean word length (definitions in
discdistill_text.wordstats), as mean +- sd over seeds, and the standard error of word validity over
all inner words pooled; seconds per seed. With ``--judge smollm2``: the judge's NLL per character
and per token (mean +- sd over seeds, and the standard error of the pooled ratio over all samples)
and its perplexity exp(pooled NLL / tokens); per character is the one to read (`judge_metrics`). ``--texts DIR`` keeps every row's samples (one jsonl per row, seed-tagged).
Prints a markdown table, writes JSON.

    python benchmarks/chars_proof.py --teacher shipped:teacher --student shipped:student \\
        --seeds 3 --samples 256 --samples-many 256 --judge smollm2 --out benchmarks/results/chars-proof.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discdistill import load_pretrained, plugins, sample
from discdistill.config import build, merge, parse_override
from discdistill.distill import RGASConfig, load_rgas
from discdistill.evaluation.baselines import TemperedDenoiser, matched_temperature
from discdistill.evaluation.judges import Judge, load_judge
from discdistill.sampling import StepRule, ancestral_step
from discdistill.workflows import resolve_checkpoint, resolve_model_dir
from discdistill_text.chars_domain import training_vocabulary
from discdistill_text.wordstats import inner_words, word_metrics

SEQ_LEN = 256


#: Rows with more steps than this use the logits cache (one host sync a step; pays off when steps ~ L).
CACHE_ABOVE_STEPS = 64


def draw(model: nn.Module, steps: int, num: int, seed: int, batch: int,
         step_rule: StepRule = ancestral_step) -> tuple[list[str], float]:
    domain = plugins.get_domain("chars")
    tic, texts = time.perf_counter(), []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num, batch):
        ids = sample(model, num_samples=min(batch, num - start), seq_len=SEQ_LEN, steps=steps, mask_id=model.mask_id,
                     generator=generator, cache=steps > CACHE_ABOVE_STEPS, step_rule=step_rule).ids
        texts += domain.decode_samples(ids)
    return texts, time.perf_counter() - tic


def _pooled_ratio(nll: torch.Tensor, units: torch.Tensor) -> tuple[float, float]:
    """sum(nll) / sum(units) over independent samples, and its standard error (delta method)."""
    ratio = float(nll.sum() / units.sum())
    return ratio, float((nll - ratio * units).std() / (units.mean() * math.sqrt(len(nll))))


def judge_metrics(judge: Judge, texts_by_seed: list[list[str]]) -> dict[str, float]:
    """The judge's NLL per token and per character: per seed (mean, sd), pooled (value, SE); PPL per token.

    Per token is the usual generative perplexity, but misspelt words split into more, individually
    likelier judge tokens, so it flatters broken text; every chars sample has the same number of
    characters, so the NLL per character (the judge's total surprise at a block) is the fair comparison.
    """
    scores = [judge.score(texts) for texts in texts_by_seed]
    out: dict[str, float] = {}
    for unit, count in (("token", lambda s, text: s.tokens), ("char", lambda s, text: len(text))):
        nll = [torch.tensor([s.nll for s in seed], dtype=torch.float64) for seed in scores]
        units = [torch.tensor([float(count(s, t)) for s, t in zip(seed, texts)], dtype=torch.float64)
                 for seed, texts in zip(scores, texts_by_seed)]
        per_seed = [float(n.sum() / u.sum()) for n, u in zip(nll, units)]
        pooled, se = _pooled_ratio(torch.cat(nll), torch.cat(units))
        suffix = "" if unit == "token" else "_per_char"
        out.update({f"judge_nll{suffix}": statistics.mean(per_seed),
                    f"judge_nll{suffix}_sd": statistics.stdev(per_seed) if len(per_seed) > 1 else math.nan,
                    f"judge_nll{suffix}_pooled": pooled, f"judge_nll{suffix}_se_pooled": se})
    out["judge_ppl"] = math.exp(out["judge_nll_pooled"])
    out["judge_tokens"] = int(sum(s.tokens for seed in scores for s in seed))
    return out


def text_metrics(texts_by_seed: list[list[str]]) -> dict[str, Any]:
    """Word validity, character entropy, distinct-n and word length: mean and sd over seeds, and the
    binomial standard error of validity over every inner word pooled."""
    vocabulary = training_vocabulary(None)
    per_seed = [word_metrics(texts, vocabulary) for texts in texts_by_seed]
    out: dict[str, Any] = {}
    for key in per_seed[0]:
        values = [m[key] for m in per_seed]
        out[key] = statistics.mean(values)
        out[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
    valid_flags = [w in vocabulary for texts in texts_by_seed for t in texts for w in inner_words(t)]
    p = sum(valid_flags) / len(valid_flags)
    out["word_validity_se_pooled"] = math.sqrt(p * (1 - p) / len(valid_flags))
    out["inner_words"] = len(valid_flags)
    return out


def texts_file(texts_dir: Path, name: str) -> Path:
    """Where a row's samples are kept: one jsonl per row, named by a slug of the row name."""
    return texts_dir / f"{re.sub('[^a-z0-9]+', '-', name.lower()).strip('-')}.jsonl"


def summary_line(name: str, out: dict[str, Any]) -> str:
    judged = (f"  judge NLL/char {out['judge_nll_per_char_pooled']:.4f} NLL/token {out['judge_nll_pooled']:.4f}"
              if "judge_nll_per_char" in out else "")
    seconds = f"  {out['seconds_per_seed']:.1f} s/seed" if "seconds_per_seed" in out else ""
    return (f"{name:<28} validity {out['word_validity']:.4f} +- {out['word_validity_sd']:.4f}  char H "
            f"{out['char_entropy']:.4f}  distinct-2 {out['distinct_2']:.4f}{judged}{seconds}")


def row(name: str, model: nn.Module, steps: int, seeds: int, num: int, batch: int,
        step_rule: StepRule = ancestral_step, judge: Judge | None = None,
        texts_dir: Path | None = None) -> dict[str, Any]:
    seconds, texts_by_seed = [], []
    for seed in range(seeds):
        texts, dt = draw(model, steps, num, seed, batch, step_rule)
        seconds.append(dt)
        texts_by_seed.append(texts)
    out: dict[str, Any] = {"name": name, "steps": steps, "seeds": seeds, "samples_per_seed": num,
                           "seconds_per_seed": statistics.mean(seconds), "examples": texts_by_seed[0][:3],
                           "logits_cache": steps > CACHE_ABOVE_STEPS, **text_metrics(texts_by_seed)}
    if texts_dir is not None:
        texts_dir.mkdir(parents=True, exist_ok=True)
        with open(texts_file(texts_dir, name), "w") as f:
            for seed, texts in enumerate(texts_by_seed):
                f.writelines(json.dumps({"seed": seed, "text": t}) + "\n" for t in texts)
    if judge is not None:
        out.update(judge_metrics(judge, texts_by_seed))
    print(summary_line(name, out), flush=True)
    return out


def teacher_matched_temperature(teacher: nn.Module, target_entropy: float, num: int, batch: int) -> float:
    """T in [0.7, 1] whose teacher@8 character entropy (seed 0) is closest to ``target_entropy`` (4 bisections)."""
    vocabulary = training_vocabulary(None)

    def entropy_at(t: float) -> float:
        return word_metrics(draw(TemperedDenoiser(teacher, t), 8, num, 0, batch)[0], vocabulary)["char_entropy"]

    return matched_temperature(entropy_at, target_entropy, low=0.7, high=1.0, bisections=4)


def rgas_config(spec: str) -> RGASConfig:
    """``"h_start=0,h_end=0"`` -> RGASConfig(h_start=0.0, h_end=0.0); ``"default"`` -> RGASConfig()."""
    data: dict[str, Any] = {}
    for item in [] if spec == "default" else spec.split(","):
        merge(data, *parse_override(item))
    return build(RGASConfig, data)


def markdown(rows: list[dict[str, Any]]) -> str:
    judged = any("judge_nll_per_char" in r for r in rows)
    head = ("| row | steps | word validity (mean +- sd over seeds; pooled SE) | char entropy | distinct-1 | distinct-2 "
            "| mean word length |" + (" judge NLL / char (mean +- sd; pooled SE) | judge NLL / token | judge PPL |"
                                      if judged else "") + " s / seed |")
    lines = [head, "|" + "---|" * (11 if judged else 8)]
    for r in rows:
        judge = (f" {r['judge_nll_per_char']:.4f} +- {r['judge_nll_per_char_sd']:.4f}; "
                 f"{r['judge_nll_per_char_se_pooled']:.4f} | {r['judge_nll']:.4f} | {r['judge_ppl']:.1f} |"
                 if "judge_nll_per_char" in r else (" - | - | - |" if judged else ""))
        lines.append(f"| {r['name']} | {r['steps']} | {r['word_validity']:.4f} +- {r['word_validity_sd']:.4f}; "
                     f"{r['word_validity_se_pooled']:.4f} | {r['char_entropy']:.4f} +- {r['char_entropy_sd']:.4f} | "
                     f"{r['distinct_1']:.4f} | {r['distinct_2']:.4f} | {r['mean_word_length']:.3f} |{judge} "
                     f"{r['seconds_per_seed']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="shipped:teacher")
    parser.add_argument("--student", default=None, help="student model or run directory (or shipped:student)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256, help="samples per seed (8-step rows)")
    parser.add_argument("--samples-many", type=int, default=256,
                        help=f"samples per seed of rows with more than {CACHE_ABOVE_STEPS} steps (slow on a CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", nargs="+", default=["teacher", "student"], choices=["teacher", "student", "rgas"])
    parser.add_argument("--rgas", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE...]",
                        help="RGASConfig overrides of one student@8 + RGAS row (repeatable; 'default': none); "
                             "needs --student to be a run directory (its discriminator) and 'rgas' in --rows")
    parser.add_argument("--teacher-steps", type=int, nargs="+", default=[8, 256], help="step counts of the teacher rows")
    parser.add_argument("--judge", default="none", help="'smollm2' (the [judge] extra), another judge spec, or none")
    parser.add_argument("--texts", type=Path, default=None, help="folder for every row's samples (jsonl)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file (rows are merged into an existing one)")
    args = parser.parse_args(argv)
    if ("student" in args.rows or "rgas" in args.rows) and args.student is None:
        parser.error("student and rgas rows need --student")
    if ("rgas" in args.rows) != bool(args.rgas):
        parser.error("give 'rgas' in --rows and at least one --rgas together")
    if args.threads:
        torch.set_num_threads(args.threads)
    domain = plugins.get_domain("chars")
    teacher = load_pretrained(resolve_model_dir(resolve_checkpoint(args.teacher, domain))).eval()
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": {}}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "python": sys.version.split()[0], "torch": torch.__version__,
                          "threads": torch.get_num_threads()}
    results["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results["command"] = " ".join(["python", "benchmarks/chars_proof.py", *(argv or sys.argv[1:])])
    reference = domain.dataset("validation", SEQ_LEN)
    held_out = word_metrics(domain.decode_samples(reference[:args.samples].long()), training_vocabulary(None))
    results["held_out_real_text"] = held_out
    print(f"held-out real text: validity {held_out['word_validity']:.4f}, char H {held_out['char_entropy']:.4f}")
    judge = load_judge(args.judge, torch.device("cpu"), progress=False)
    results["judge"] = args.judge
    common = dict(seeds=args.seeds, batch=args.batch, judge=judge, texts_dir=args.texts)
    draws_per_seed = math.ceil(args.samples / args.batch)
    if args.student is not None:
        student_dir = resolve_model_dir(resolve_checkpoint(args.student, domain))
        student = load_pretrained(student_dir).eval()
    with torch.no_grad():
        if "teacher" in args.rows:
            for steps in args.teacher_steps:
                num = args.samples_many if steps > CACHE_ABOVE_STEPS else args.samples
                results["rows"][f"teacher@{steps}"] = row(f"teacher@{steps}", teacher, steps, num=num, **common)
        if "student" in args.rows:
            results["rows"]["student@8"] = row("student@8", student, 8, num=args.samples, **common)
            t = teacher_matched_temperature(teacher, results["rows"]["student@8"]["char_entropy"], args.samples, args.batch)
            results["matched_temperature"] = t
            results["rows"]["teacher@8 T-matched"] = row(f"teacher@8, T = {t:.3f}", TemperedDenoiser(teacher, t), 8,
                                                          num=args.samples, **common)
        if "rgas" in args.rows:
            for spec in args.rgas:
                config = rgas_config(spec)
                rule = load_rgas(student_dir, config)
                name = f"student@8 + RGAS ({spec})"
                results["rows"][name] = {**row(name, student, 8, num=args.samples, step_rule=rule, **common),
                                         "rgas": config.model_dump(),
                                         "disc_passes_per_draw": rule.disc_passes / (args.seeds * draws_per_seed)}
    rows = sorted(results["rows"].values(), key=lambda r: (r["steps"], "student" in r["name"], r["name"]))
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
