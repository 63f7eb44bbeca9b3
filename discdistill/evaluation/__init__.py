"""Honest evaluation: judges, generative perplexity, entropy, domain metrics, reports and plots.

One concept a module: `judges` (who scores), `perplexity` (the protocol, pure functions), `entropy`
(the diversity number), `report` (protocol + rows, JSON and markdown, the 2% entropy flag), `config`
(`EvalConfig`), `runner` (`evaluate`: what `discdistill eval` does), `plots` (optional, matplotlib).
See docs/evaluation.md.
"""

from discdistill.evaluation.entropy import mean_entropy, sample_entropies, sample_entropy
from discdistill.evaluation.judges import JUDGES, CausalLMJudge, Judge, JudgeError, load_judge
from discdistill.evaluation.perplexity import (
    PerplexityResult, SampleScore, generative_perplexity, judge_inputs, score_texts, split_at_eos,
)
from discdistill.evaluation.report import EntropyReference, EvalProtocol, EvalReport, EvalRow, flag_entropy

__all__ = [
    "JUDGES", "CausalLMJudge", "EntropyReference", "EvalProtocol", "EvalReport", "EvalRow", "Judge", "JudgeError",
    "PerplexityResult", "SampleScore", "flag_entropy", "generative_perplexity", "judge_inputs", "load_judge",
    "mean_entropy", "sample_entropies", "sample_entropy", "score_texts", "split_at_eos",
]
