"""The chars domain (text plugin): the text8 protocol, its tokenizer, data splits, word metrics, bits."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch

pytest.importorskip("discdistill_text", reason="install the text plugin: pip install -e plugins/text")

from discdistill import plugins  # noqa: E402
from discdistill.errors import ConfigError, DataError  # noqa: E402
from discdistill_text import chars  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from discdistill_text.chars import CHAR_MASK_ID, CharTokenizer, text8_normalize  # noqa: E402
from discdistill.diffusion import nats_to_bits  # noqa: E402
from discdistill_text.chars_domain import CharsDomain, training_vocabulary  # noqa: E402
from discdistill_text.wordstats import (  # noqa: E402
    char_entropy, distinct_n, inner_words, mean_word_length, word_metrics, word_validity,
)


# --- the protocol ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world "),
    ("In 1790", "in one seven nine zero "),
    ("x2y", "x two y"),
    ("0 9", " zero nine "),
    ("Café naïve — déjà vu", "caf na ve d j vu"),
    ("tabs\tand\r\nnew\nlines  and   runs", "tabs and new lines and runs"),
    ("it's $5.00 (approx.)", "it s five zero zero approx "),
    ("日本語 text 🎉", " text "),
    ("", ""),
    ("...", " "),
])
def test_text8_protocol(raw, expected):
    out = text8_normalize(raw)
    assert out == expected
    assert set(out) <= set(chars.ALPHABET) and "  " not in out


def test_tokenizer_ids_and_round_trip():
    tok = CharTokenizer()
    assert (tok.vocab_size, tok.mask_id) == (28, 27)
    assert tok.encode(" az") == [0, 1, 26]
    text = "the quick brown fox jumps over the lazy dog"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([8, 9, CHAR_MASK_ID]) == "hi_"


def test_tokenizer_refuses_unnormalised_text():
    with pytest.raises(ValueError, match="'H' is not in the text8 alphabet"):
        CharTokenizer().encode("Hi")
    with pytest.raises(ValueError, match="'é' is not in the text8 alphabet"):
        CharTokenizer().encode("café")


# --- data -----------------------------------------------------------------------------------------

def test_registered_through_the_text_plugin():
    entries = plugins.installed_domains()
    assert entries["chars"].package == "discdistill-text"
    assert isinstance(plugins.get_domain("chars"), CharsDomain)


def test_tiny_split_by_whole_speech_and_crops():
    from discdistill_text.corpus import TINY_DOCUMENTS, embedded_records

    domain = CharsDomain()
    train, validation = domain.dataset("train", 64, "tiny"), domain.dataset("validation", 64, "tiny")
    records = embedded_records()[:TINY_DOCUMENTS]
    held_out = text8_normalize(records[-1]["text"]).strip()  # < 20 speeches: the last one is held out
    tok = domain.tokenizer()
    stream = chars.embedded_char_streams(tiny=True)
    assert tok.decode(stream["validation"].tolist()) == held_out
    expected_train = " ".join(text8_normalize(r["text"]).strip() for r in records[:-1])
    assert tok.decode(stream["train"].tolist()) == expected_train
    # train: one window per offset (random crops under a shuffled order), zero-copy uint8
    assert train.dtype == torch.uint8 and train.shape == (len(expected_train) - 63, 64)
    assert tok.decode(train[5].tolist()) == expected_train[5:69]
    # validation: disjoint consecutive blocks
    assert validation.shape == (len(held_out) // 64, 64)
    assert tok.decode(validation[1].tolist()) == held_out[64:128]
    assert int(train.max()) < CHAR_MASK_ID


def test_local_file_protocol_and_split(tmp_path):
    text = "Line ONE, with 2 digits.\n" * 200
    path = tmp_path / "corpus.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    domain = CharsDomain()
    train, validation = domain.dataset("train", 16, str(path)), domain.dataset("validation", 16, str(path))
    stream = text8_normalize(text).strip()
    n_val = int(len(stream) * chars.FILE_VALIDATION_FRACTION)
    assert train.shape[0] == len(stream) - n_val - 15
    assert validation.shape == (n_val // 16, 16)
    assert domain.tokenizer().decode(validation[0].tolist()) == stream[len(stream) - n_val:][:16]


def test_text8_standard_split(monkeypatch, tmp_path):
    monkeypatch.setattr(chars, "TEXT8_TRAIN_CHARS", 900)
    monkeypatch.setattr(chars, "TEXT8_VALIDATION_CHARS", 50)
    chars.file_char_streams.cache_clear()
    path = tmp_path / "text8"
    path.write_text(("abc " * 250)[:1000])  # 1000 chars: 900 / 50 / 50, as 90M / 5M / 5M
    streams = chars.char_streams(str(path))
    assert (len(streams["train"]), len(streams["validation"])) == (900, 50)


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"\x00\x01\x02binary", "binary"),
    (b"\xff\xfe\xfa not utf8", "not UTF-8"),
    ("1234 !!! 日本語".encode(), None),  # digits become words: letters exist
    ("!!! ??? 日本語 ...".encode(), "no letters"),
])
def test_bad_files_one_line_errors(tmp_path, content, needle):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    if needle is None:
        assert CharsDomain().dataset("train", 4, str(path)).shape[1] == 4
        return
    with pytest.raises(DataError, match=needle) as err:
        CharsDomain().dataset("train", 4, str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_directory_short_and_bad_seq_len(tmp_path):
    domain = CharsDomain()
    with pytest.raises(DataError, match="no such file"):
        domain.dataset("train", 8, str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="is a directory"):
        domain.dataset("train", 8, str(tmp_path))
    (tmp_path / "short.txt").write_text("hello there")
    with pytest.raises(DataError, match="fewer than seq_len=64"):
        domain.dataset("train", 64, str(tmp_path / "short.txt"))
    with pytest.raises(ConfigError, match="seq_len"):
        domain.dataset("train", 0)


# --- metrics --------------------------------------------------------------------------------------

def test_word_metrics_by_hand():
    vocabulary = {"the", "cat", "sat", "on", "mat"}
    samples = ["he cat sat xq mat ma", "at the the zz"]  # inner: cat sat xq mat | the the
    assert inner_words(samples[0]) == ["cat", "sat", "xq", "mat"]
    assert inner_words("one two") == []
    assert word_validity(samples, vocabulary) == pytest.approx(5 / 6)
    assert distinct_n(samples, 1) == pytest.approx(5 / 6)  # cat sat xq mat the (the twice)
    assert distinct_n(samples, 2) == pytest.approx(4 / 4)  # (cat sat) (sat xq) (xq mat) (the the)
    assert mean_word_length(samples) == pytest.approx((3 + 3 + 2 + 3 + 3 + 3) / 6)
    counts = {"a": 2, "b": 1, " ": 1}
    expected = -sum(c / 4 * math.log(c / 4) for c in counts.values())
    assert char_entropy(["ab a"]) == pytest.approx(expected)
    nan = word_metrics(["two words"], vocabulary)
    assert math.isnan(nan["word_validity"]) and math.isnan(nan["distinct_1"])
    assert math.isnan(char_entropy([]))


def test_domain_metrics_ceiling_on_held_out_text():
    domain = CharsDomain()
    validation = domain.dataset("validation", 128, "tiny")
    tok = domain.tokenizer()
    garbage = torch.tensor([tok.encode(("qzx vbn " * 20)[:128])] * 4)
    out = domain.metrics(garbage, validation)
    assert out["word_validity"] == 0.0
    assert out["reference_word_validity"] > 0.9  # real held-out speech: nearly every word is known
    assert out["reference_char_entropy"] > 2.5 and out["char_entropy"] < 2.1
    assert training_vocabulary("tiny") >= {"the", "united", "states"}


def test_nats_to_bits():
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert nats_to_bits(1.0) == pytest.approx(1.4426950408889634)


# --- end to end through the command line ----------------------------------------------------------

TINY_MODEL = ["--set", "model_overrides.hidden_size=32", "--set", "model_overrides.n_heads=2",
              "--set", "model_overrides.cond_dim=16"]
TINY_DISTILL = ["--set", "batch_rows=2", "--set", "group_size=2", "--set", "reward_times=2", "--set", "warmup_steps=1",
                "--set", "bf16=false", "--device", "cpu"]


_run = run_cli


def test_pretrain_train_sample_eval_demo_on_cpu(tmp_path, capsys):
    import json

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    code, out, err = _run(["pretrain", "--domain", "chars", "--data", "tiny", "--out", str(teacher), "--steps", "4",
                           "--seq-len", "32", "--batch-size", "4", "--device", "cpu", "--quiet", "--set", "eval_every=2",
                           "--set", "eval_batches=1", "--set", "precision=bfloat16", *TINY_MODEL], capsys)
    assert code == 0, err
    assert "bits/token" in out
    records = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "val_nll" in r][-1]
    assert last["val_bits_per_token"] == pytest.approx(last["val_nll"] / math.log(2))
    code, out, err = _run(["train", "--domain", "chars", "--teacher", str(teacher), "--data", "tiny", "--out",
                           str(student), "--iterations", "2", "--quiet", *TINY_DISTILL], capsys)
    assert code == 0, err
    saved = json.loads((student / "student" / "config.json").read_text())["extra"]["distill_config"]
    assert saved["disc_objective"] == "sequence" and saved["reward_times"] == 2  # the domain's recipe, then --set
    code, out, err = _run(["sample", "--domain", "chars", "--checkpoint", str(student), "--steps", "4",
                           "--num-samples", "3", "--device", "cpu", "--out", str(tmp_path / "s.jsonl")], capsys)
    assert code == 0, err
    texts = [json.loads(line)["text"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(texts) == 3 and all(len(t) == 32 and set(t) <= set(chars.ALPHABET) for t in texts)
    code, out, err = _run(["eval", "--domain", "chars", "--checkpoint", str(student), "--steps", "2,4", "--num-samples",
                           "4", "--batch-size", "4", "--judge", "none", "--data", "tiny", "--device", "cpu", "--quiet",
                           "--out", str(tmp_path / "eval"), "--set", "elbo_blocks=4"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {"word_validity", "reference_word_validity", "char_entropy"} <= set(report["rows"][0]["metrics"])
    assert report["protocol"]["elbo_blocks"] == 4 and report["protocol"]["elbo_nll"] > 0
    assert "bits/token" in out and "word_validity = fraction of inner words" in out
    code, out, err = _run(["demo", "--domain", "chars", "--teacher", str(teacher), "--out", str(tmp_path / "demo"),
                           "--iterations", "1", "--num-samples", "2", "--many-steps", "4", "--quiet",
                           *TINY_DISTILL[:-2], "--set", "device=cpu"], capsys)
    assert code == 0, err
    assert out.count("  > ") >= 2 * 3 and "held-out real text" in out and "| teacher@4 |" in out


def test_shipped_teacher_loads_and_fits_the_domain():
    from discdistill.checkpoint import load_pretrained
    from discdistill.workflows import check_compatible, resolve_checkpoint, resolve_model_dir

    domain = CharsDomain()
    assert set(domain.shipped_models()) == {"teacher", "student"}
    for name in ("teacher", "student"):
        model = load_pretrained(resolve_model_dir(resolve_checkpoint(f"shipped:{name}", domain)))
        check_compatible(model, domain, 256)
        assert (model.vocab_size, model.seq_len) == (28, 256)
    with pytest.raises(Exception, match="ships no model 'nope'; it ships: shipped:"):
        resolve_checkpoint("shipped:nope", domain)


def test_distillation_checks_crop_windows_through_their_stream():
    """10 M overlapping windows must not be materialised (as int64 they would take 21 GB): the id checks read
    the shared stream, and a bad id anywhere in it is still caught."""
    from discdistill.distill.trainer import _stored_values

    stream = np.arange(20, dtype=np.uint8) % 27
    windows = chars.crop_windows(stream, 8)
    assert windows.shape == (13, 8) and _stored_values(windows).numel() == 20
    assert torch.equal(_stored_values(windows), torch.from_numpy(stream.copy()))
    dense = torch.arange(12).reshape(3, 4)
    assert _stored_values(dense) is dense
