"""The text domain plugin (plugins/text, distribution discdistill-text): tokenizer, data, samples, metrics."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("discdistill_text", reason="install the text plugin: pip install -e plugins/text")

from discdistill.errors import DataError  # noqa: E402
from discdistill_text import corpus  # noqa: E402
from discdistill_text import TextDomain, get_tokenizer, read_samples, unigram_entropy, write_samples  # noqa: E402
from discdistill.evaluation.entropy import sample_entropies  # noqa: E402
from discdistill_text.domain import TXT_DELIMITER, unigram_cross_entropy  # noqa: E402

EOS, MASK = 50256, 50257


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


@pytest.fixture()
def domain():
    return TextDomain()


# --- tokenizer ------------------------------------------------------------------------------------

def test_gpt2_ids_exact(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.encode("<|endoftext|>") == [EOS]


@pytest.mark.parametrize("text", [
    "Hello world",
    "  leading spaces, two  inside\n\nand a blank line\n",
    "héllo wörld — naïve café, 日本語のテキスト, emoji 🎉👍🏽, math ∑ x² ≤ ∞",
    "tabs\tand\r\nCRLF and \u2028 line separator",
    "first document<|endoftext|>second document",
    "",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_ids(tok):
    assert (tok.vocab_size, tok.mask_id, tok.eos_id, tok.bos_id, tok.pad_id) == (50258, MASK, EOS, EOS, None)
    assert get_tokenizer() is tok  # cached
    assert tok.decode([15496, MASK, 995, EOS]) == "Hello[MASK] world<|endoftext|>"
    assert tok.decode(torch.tensor([MASK, MASK])) == "[MASK][MASK]"
    assert MASK not in tok.encode("[MASK]")
    with pytest.raises(ValueError):
        tok.decode([50258])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


# --- data -----------------------------------------------------------------------------------------

def _stream(tok, documents):
    return [i for d in documents for i in tok.encode(d) + [EOS]]


def test_tiny_blocks_wrap_documents_with_eos(tok, domain):
    records = corpus.embedded_records()[: corpus.TINY_DOCUMENTS]
    train_docs = [r["text"] for r in records[:-1]]  # < 20 documents: the last one is held out
    expected = _stream(tok, train_docs)
    for seq_len in (7, 128):
        blocks = domain.dataset("train", seq_len, "tiny")
        n = len(expected) // seq_len
        assert blocks.dtype == torch.long and blocks.shape == (n, seq_len)
        assert blocks.flatten().tolist() == expected[: n * seq_len]
    assert int((domain.dataset("train", 1, "tiny") == EOS).sum()) == len(train_docs)
    val = domain.dataset("valid", 16, "tiny")
    assert val.flatten().tolist() == _stream(tok, [records[-1]["text"]])[: val.numel()]
    blocks[0, 0] = -1  # the caller owns its tensor: the cache is not changed
    assert domain.dataset("train", 128, "tiny")[0, 0] != -1


def test_embedded_corpus_train_validation_disjoint(domain):
    records = corpus.embedded_records()
    assert len(records) == 233 and records[0]["year"] == 1790
    streams = corpus.embedded_streams()

    def docs(stream):
        cuts = np.flatnonzero(stream == EOS)
        return [stream[a + 1:b].tobytes() for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]

    train, val = docs(streams["train"]), docs(streams["validation"])
    assert (len(train), len(val)) == (222, 11)
    assert not set(train) & set(val)
    assert len(streams["train"]) + len(streams["validation"]) > 2_000_000
    x, y = domain.dataset("train", 128), domain.dataset("validation", 128)
    assert x.shape == (len(streams["train"]) // 128, 128) and y.shape == (len(streams["validation"]) // 128, 128)
    assert 6.0 < unigram_entropy(streams["train"]) < 7.5


def _paragraphs(n):
    return [f"Paragraph number {i} says something {'new ' * (i % 3)}here." for i in range(n)]


def test_local_txt_file_and_folder(tok, domain, tmp_path):
    paragraphs = _paragraphs(25)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs[:10]) + "\n \n\n" + "\n\n".join(paragraphs[10:]) + "\n")
    train = domain.dataset("train", 8, str(path))
    expected = _stream(tok, paragraphs[:19] + paragraphs[20:])
    assert train.flatten().tolist() == expected[: train.numel()]
    val = domain.dataset("validation", 4, path)
    assert val.flatten().tolist() == _stream(tok, [paragraphs[19]])[: val.numel()]

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text(paragraphs[1])
    (folder / "sub" / "c.txt").write_text(paragraphs[2])
    (folder / "a.txt").write_text(paragraphs[0])
    (folder / "ignored.md").write_text("not read")
    blocks = domain.dataset("train", 2, str(folder))  # 3 documents: a, b train; sub/c validation
    assert blocks.flatten().tolist() == _stream(tok, paragraphs[:2])[: blocks.numel()]


def test_local_jsonl_and_single_document(tok, domain, tmp_path):
    paragraphs = _paragraphs(3)
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": p, "id": i}) for i, p in enumerate(paragraphs)) + "\n\n")
    train = domain.dataset("train", 3, str(path))
    assert train.flatten().tolist() == _stream(tok, paragraphs[:2])[: train.numel()]
    single = tmp_path / "one.txt"
    single.write_text(" ".join(paragraphs * 20))  # one document: the last 5% of its tokens validate
    stream = _stream(tok, [single.read_text()])
    cut = len(stream) - int(len(stream) * 0.05)
    assert domain.dataset("train", 1, single).flatten().tolist() == stream[:cut]
    assert domain.dataset("validation", 1, single).flatten().tolist() == stream[cut:]


@pytest.mark.parametrize("name, content, needle", [
    ("missing.txt", None, "missing.txt"),
    ("empty.txt", "", "empty.txt"),
    ("blank.jsonl", "\n\n", "blank.jsonl"),
    ("notext.jsonl", '{"text": "fine"}\n{"body": "no text"}\n', "notext.jsonl:2"),
    ("badjson.jsonl", '{"text": "fine"}\n{"text": \n', "badjson.jsonl:2"),
    ("number.jsonl", '{"text": 3}\n', "number.jsonl:1"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "latin1.txt"),
    ("table.csv", "a,b\n", "table.csv"),
    ("short.txt", "Too short.", "short.txt"),
])
def test_bad_local_input_names_the_file(domain, tmp_path, name, content, needle):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as info:
        domain.dataset("train", 64, str(path))
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_bad_split_and_seq_len(domain):
    from discdistill.errors import ConfigError

    with pytest.raises(ConfigError):
        domain.dataset("test", 8, "tiny")
    with pytest.raises(ConfigError):
        domain.dataset("train", 0, "tiny")


def _force_hub_offline(monkeypatch, cache):
    monkeypatch.setenv("DISCDISTILL_CACHE", str(cache))
    monkeypatch.delenv("DISCDISTILL_OPENWEBTEXT", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module, attr in (("datasets.config", "HF_HUB_OFFLINE"), ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        if module in sys.modules:  # imported earlier in this process: the environment is read at import
            monkeypatch.setattr(sys.modules[module], attr, True)


def test_openwebtext_offline_raises_data_error_quickly(domain, tmp_path, monkeypatch):
    _force_hub_offline(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(DataError, match="--data") as info:
        domain.dataset("train", 1024, "openwebtext")
    assert time.perf_counter() - start < 20 and "\n" not in str(info.value)


def test_openwebtext_tokenized_once_and_memory_mapped(tok, domain, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    _force_hub_offline(monkeypatch, tmp_path)
    documents = _paragraphs(7)
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        held_out = 2  # stands in for MDLM's 100,000
        rows = documents[:-held_out] if split.startswith("train[:-") else documents[-held_out:]
        return datasets.Dataset.from_dict({"text": rows})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    blocks = domain.dataset("train", 4, "openwebtext")
    assert calls == [("openwebtext", "train[:-100000]")]
    assert blocks.dtype == torch.uint16 and blocks.shape[1] == 4
    assert blocks.long().flatten().tolist() == _stream(tok, documents[:-2])[: blocks.numel()]
    assert list((tmp_path / "text").glob("*.tmp")) == []
    again = domain.dataset("train", 8, "openwebtext")  # from the cache: no second load
    assert len(calls) == 1 and again.long().flatten().tolist() == blocks.long().flatten().tolist()[: again.numel()]
    domain.dataset("validation", 2, "openwebtext")
    assert calls[-1] == ("openwebtext", "train[-100000:]")


# --- plugin registration --------------------------------------------------------------------------

def test_discovered_through_entry_point():
    import discdistill.plugins

    discdistill.plugins.refresh()
    entry = discdistill.plugins.installed_domains()["text"]
    assert entry.package == "discdistill-text" and entry.domain_class is TextDomain
    domain = discdistill.plugins.get_domain("text")
    assert domain.name == "text" and domain.default_seq_len == 128 and domain.tokenizer().vocab_size == 50258


# --- samples and metrics --------------------------------------------------------------------------

SAMPLES = ["First sample.\nWith two lines.", "", "Unicode: 日本語 🎉 and \u2028 and \r\n", "last"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_write_samples_round_trip(domain, tmp_path, suffix):
    path = tmp_path / "out" / f"samples{suffix}"
    written = domain.write_samples(SAMPLES, path, {"model": "student", "steps": 8})
    assert written == path and read_samples(path) == SAMPLES
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    if suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
        assert records[0] == {"model": "student", "steps": 8, "index": 0, "text": SAMPLES[0]}
    else:
        assert path.read_text(encoding="utf-8").count(TXT_DELIMITER) == len(SAMPLES)
    domain.write_samples(["replaced"], path, {})
    assert read_samples(path) == ["replaced"]


def test_write_samples_default_suffix_and_decode(domain, tok, tmp_path):
    path = write_samples(["a"], tmp_path / "samples", {})
    assert path.name == "samples.jsonl" and read_samples(path) == ["a"]
    ids = torch.tensor([tok.encode("Hello world") + [EOS, MASK]])
    assert domain.decode_samples(ids) == ["Hello world<|endoftext|>[MASK]"]


def test_metrics(domain):
    samples = torch.tensor([[5, 5, 5, 5], [1, 2, 3, EOS]])
    assert sample_entropies(samples) == pytest.approx([0.0, math.log(4)], abs=1e-12)
    metrics = domain.metrics(samples, torch.tensor([[1, 2, 1, 2]]))
    assert metrics["entropy"] == pytest.approx(math.log(4) / 2)
    assert metrics["eos_fraction"] == pytest.approx(1 / 8) and metrics["mask_fraction"] == 0
    assert metrics["reference_entropy"] == pytest.approx(math.log(2))
    assert unigram_entropy(np.arange(16)) == pytest.approx(math.log(16))
    ids = np.array([0, 1, 0, 1])
    assert unigram_cross_entropy(ids, ids, vocab_size=2, alpha=0) == pytest.approx(math.log(2))
