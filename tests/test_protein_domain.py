"""The protein domain (distribution discdistill-protein): tokenizer, data, FASTA IO, lengths, metrics."""

from __future__ import annotations

import gzip
import itertools
import math
import random
import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("Bio")
pytest.importorskip("discdistill_protein")

from Bio import SeqIO  # noqa: E402
from discdistill_protein import metrics as M  # noqa: E402
from discdistill_protein.data import (  # noqa: E402
    VALIDATION_EVERY,
    deduplicate,
    embedded_path,
    length_prefilled_init,
    sample_lengths,
)
from discdistill_protein.domain import ProteinDomain  # noqa: E402
from discdistill_protein.fasta import parse_metadata, read_fasta, write_fasta  # noqa: E402
from discdistill_protein.tokenizer import RESIDUES, ProteinTokenizer  # noqa: E402

import discdistill.plugins  # noqa: E402
from discdistill.errors import ConfigError, DataError, ModelMismatchError, StorageError  # noqa: E402
from discdistill.sampling import sample  # noqa: E402

PAD, EOS, BOS, UNK, MASK = 0, 1, 2, 3, 29


@pytest.fixture(scope="module")
def domain() -> ProteinDomain:
    return ProteinDomain(length_mode="learned")


@pytest.fixture(scope="module")
def tok() -> ProteinTokenizer:
    return ProteinTokenizer()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- tokenizer --------------------------------------------------------------------------------------
def test_vocabulary_layout(tok):
    assert tok.vocab_size == 30 and tok.mask_id == tok.vocab_size - 1 == MASK
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (PAD, EOS, BOS, UNK)
    assert tok.encode(RESIDUES) == list(range(4, 29))
    assert RESIDUES[:20] == "ACDEFGHIKLMNPQRSTVWY" and RESIDUES[20:] == "XBUZO"


def test_round_trip_exact_on_valid_input(tok):
    rng = random.Random(0)
    for _ in range(50):
        seq = "".join(rng.choice(RESIDUES) for _ in range(rng.randint(1, 300)))
        assert tok.decode(tok.encode(seq)) == seq
    assert tok.decode([]) == "" and tok.encode("") == []


def test_case_insensitive_and_stop_codon(tok):
    assert tok.encode("mkvXbuzo") == tok.encode("MKVXBUZO")
    assert tok.decode(tok.encode("mkv")) == "MKV"
    assert tok.encode("MKV*") == tok.encode("MKV")


def test_non_standard_policy(tok):
    with pytest.raises(DataError, match=r"record 'seq1'.*'J' at position 3 \(1-based\)"):
        tok.encode("MKJV", record_id="seq1")
    with pytest.raises(DataError, match=r"'\*' at position 3.*only allowed as the last"):
        tok.encode("MK*V")
    with pytest.raises(DataError, match="alignment"):
        tok.encode("MK-V")
    lenient = ProteinTokenizer(strict=False)
    assert lenient.encode("MKJ")[-1] == UNK
    assert lenient.decode(lenient.encode("MKJ")) == "MKX"


def test_decode_cuts_at_eos_skips_pad_bos_renders_mask(tok):
    k, m = tok.encode("KM")
    assert tok.decode([BOS, k, PAD, m, MASK, UNK, EOS, k, k, PAD]) == "KMXX"
    assert tok.decode(torch.tensor([BOS, k, EOS, m])) == "K"
    with pytest.raises(ModelMismatchError, match="outside the protein vocabulary"):
        tok.decode([BOS, 30])


# -- dataset ----------------------------------------------------------------------------------------
def test_embedded_dataset_shapes_and_layout(domain):
    assert ProteinDomain.default_seq_len == 256
    train = domain.dataset("train", 256)
    val = domain.dataset("validation", 256)
    assert train.dtype == torch.long and train.shape == (3800, 256) and val.shape == (200, 256)
    for block in (train, val):
        assert not (block == MASK).any() and not (block == UNK).any()
        has_eos = (block == EOS).any(-1)
        assert has_eos.any() and (~has_eos).any()  # short proteins end inside, long ones are cropped
        no_eos = torch.full_like(has_eos, 256, dtype=torch.long)
        first_eos = torch.where(has_eos, (block == EOS).int().argmax(-1), no_eos)
        pos = torch.arange(256)
        after = pos[None] > first_eos[:, None]
        assert (block[after] == PAD).all()  # only PAD after the EOS
        assert not (block[~after & (block == PAD)]).any()  # no PAD before it
        assert ((block == EOS).sum(-1) <= 1).all() and ((block == BOS).sum(-1) <= 1).all()
        assert (block[:, 1:] != BOS).all()  # BOS only ever at position 0
    # windows with BOS and EOS decode to the full protein
    lengths = domain.length_distribution("train")
    short = (lengths <= 254).nonzero().squeeze(1)
    records = domain.records("train")
    tok = domain.tokenizer()
    for i in short[:20].tolist():
        assert tok.decode(train[i]) == records[i].sequence and train[i, 0] == BOS


def test_short_sequences_framed_with_bos_eos_pad(tmp_path, domain):
    path = write(tmp_path / "small.fasta", ">a\nMKV\n>b\nACDEF\n>c\nWW\n")
    block = domain.dataset("train", 8, str(path))
    tok = domain.tokenizer()
    assert block[0].tolist() == [BOS, *tok.encode("MKV"), EOS, PAD, PAD, PAD]
    assert block[1].tolist() == [BOS, *tok.encode("ACDEF"), EOS, PAD]
    assert domain.dataset("validation", 8, str(path))[0].tolist() == [BOS, *tok.encode("WW"), EOS, PAD, PAD, PAD, PAD]
    with pytest.raises(ConfigError, match="too short"):
        domain.dataset("train", 2, str(path))
    with pytest.raises(ConfigError, match="unknown split"):
        domain.dataset("test", 8, str(path))


def test_crops_are_deterministic_contiguous_and_keep_true_ends(tmp_path):
    rng = random.Random(1)
    seqs = ["".join(rng.choice(RESIDUES[:20]) for _ in range(60)) for _ in range(40)]
    path = write(tmp_path / "long.fasta", "".join(f">r{i}\n{s}\n" for i, s in enumerate(seqs)))
    a = ProteinDomain(seed=3).dataset("train", 16, str(path))
    b = ProteinDomain(seed=3).dataset("train", 16, str(path))
    c = ProteinDomain(seed=4).dataset("train", 16, str(path))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ProteinDomain().dataset("train", 16, str(path), seed=3), a)
    tok = ProteinTokenizer()
    train_seqs = [s for i, s in enumerate(seqs) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    starts = set()
    for row, seq in zip(a, train_seqs, strict=True):
        framed = [BOS, *tok.encode(seq), EOS]
        window = row.tolist()
        start = next(s for s in range(len(framed) - 15) if framed[s:s + 16] == window)
        starts.add(start)
        assert (window[0] == BOS) == (start == 0) and (window[-1] == EOS) == (start == len(framed) - 16)
        assert PAD not in window
    assert len(starts) > 10  # crops are spread, not all at the start


def test_splits_are_disjoint_and_deterministic(domain):
    train = domain.records("train")
    val = domain.records("validation")
    assert len(train) == 3800 and len(val) == 200
    assert not {r.sequence for r in train} & {r.sequence for r in val}
    everything = deduplicate(read_fasta(embedded_path()))
    assert len(everything) == 4000
    assert [r.id for r in val] == [r.id for r in everything[VALIDATION_EVERY - 1::VALIDATION_EVERY]]


def test_local_file_duplicates_removed_before_split(tmp_path):
    text = "".join(f">r{i}\n{'MKV' + 'A' * (i % 7)}\n" for i in range(30))  # only 7 distinct sequences
    path = write(tmp_path / "dups.fasta", text)
    d = ProteinDomain()
    train, val = d.records("train", str(path)), d.records("validation", str(path))
    assert len(train) + len(val) == 7 and len(val) == 1
    assert not {r.sequence for r in train} & {r.sequence for r in val}


# -- bad input: every case has its message ------------------------------------------------------------
def test_invalid_character_names_record_and_position(tmp_path):
    path = write(tmp_path / "bad.fasta", ">ok\nMKV\n>sp|P1|BAD desc\nMKV\nAJ\n")
    expected = r"record 'sp\|P1\|BAD' \(#2 in the file\): invalid character 'J' at position 5"
    with pytest.raises(DataError, match=expected):
        read_fasta(path)


def test_all_problems_reported_and_nothing_loaded(tmp_path):
    path = write(tmp_path / "bad.fasta", "".join(f">r{i}\nMK{i}V\n" for i in range(8)) + ">empty\n")
    with pytest.raises(DataError) as info:
        ProteinDomain().dataset("train", 16, str(path))
    message = str(info.value)
    assert "9 problems found; nothing was loaded" in message and "and 4 more" in message
    assert "'r0' (#1 in the file): invalid character '0' at position 3" in message


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        read_fasta(write(tmp_path / "empty.fasta", ""))
    with pytest.raises(DataError, match="is empty"):
        read_fasta(write(tmp_path / "blank.fasta", "\n  \n"))


def test_non_fasta_file(tmp_path):
    message = r"is not FASTA: its first non-empty line 'id,sequence' does not start with '>'"
    with pytest.raises(DataError, match=message):
        read_fasta(write(tmp_path / "table.csv", "id,sequence\na,MKV\n"))
    (tmp_path / "image.fasta").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    with pytest.raises(DataError, match="not a text file|binary"):
        read_fasta(tmp_path / "image.fasta")


def test_nucleotide_file_given_as_protein(tmp_path):
    rng = random.Random(2)
    text = "".join(f">gene{i}\n{''.join(rng.choice('ACGT') for _ in range(120))}\n" for i in range(5))
    with pytest.raises(DataError, match=r"looks like DNA/RNA, not protein: 100.0% of its 600 residues are A/C/G/T/U/N"):
        read_fasta(write(tmp_path / "dna.fasta", text))
    # real proteins are nowhere near the threshold
    read_fasta(embedded_path())


def test_record_without_sequence(tmp_path):
    with pytest.raises(DataError, match=r"record 'nothing' \(#2 in the file\) has no sequence"):
        read_fasta(write(tmp_path / "hole.fasta", ">a\nMKV\n>nothing\n>c\nMKW\n"))


def test_missing_path_corrupt_gzip_and_too_few_records(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_fasta(tmp_path / "nope.fasta")
    data = gzip.compress(b">a\n" + b"MKV" * 5000 + b"\n")
    (tmp_path / "cut.fasta.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_fasta(tmp_path / "cut.fasta.gz")
    one = write(tmp_path / "one.fasta", ">a\nMKV\n")
    with pytest.raises(DataError, match="no validation records"):
        ProteinDomain().dataset("validation", 8, str(one))


def test_hub_source_offline_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'agemagician/uniref50' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError, match=r"could not load 'agemagician/uniref50'.*--data PATH.*embedded"):
        ProteinDomain().dataset("train", 64, "uniref50")


def test_hub_source_reads_sequence_column(monkeypatch):
    rows = {"train": [{"id": "UniRef50_A", "text": "MKVL"}, {"id": "UniRef50_B", "text": "acdef"}],
            "validation": [{"id": "UniRef50_C", "text": "WWY"}]}
    fake = types.SimpleNamespace(load_dataset=lambda name, split, streaming: iter(rows[split]))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    d = ProteinDomain()
    assert [r.sequence for r in d.records("train", "uniref50")] == ["MKVL", "ACDEF"]
    assert d.dataset("validation", 6, "uniref50")[0].tolist()[:5] == [BOS, *ProteinTokenizer().encode("WWY"), EOS]
    rows["train"].append({"id": "UniRef50_D", "text": "MK1"})
    with pytest.raises(DataError, match=r"row #3 \('UniRef50_D'\): invalid character '1' at position 3"):
        ProteinDomain().records("train", "uniref50")


# -- FASTA IO ---------------------------------------------------------------------------------------------
def test_fasta_round_trip_exact(tmp_path, tok):
    with gzip.open(embedded_path(), "rt") as handle:
        head = list(itertools.islice(SeqIO.parse(handle, "fasta"), 60))
    source = tmp_path / "in.fasta"
    SeqIO.write(head, source, "fasta")
    records = read_fasta(source)
    decoded = [type(r)(r.id, r.description, tok.decode(tok.encode(r.sequence))) for r in records]
    out = write_fasta(decoded, tmp_path / "out.fasta")
    again = list(SeqIO.parse(out, "fasta"))
    assert [(r.id, r.description, str(r.seq)) for r in again] == [(r.id, r.description, str(r.seq)) for r in head]
    assert out.read_text() == source.read_text()


def test_gzip_detected_by_magic_bytes(tmp_path):
    text = ">a desc\nMKVL\n>b\nWWY*\n"
    (tmp_path / "x.fasta.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "no_suffix.fa").write_bytes(gzip.compress(text.encode()))
    for name in ("x.fasta.gz", "no_suffix.fa"):
        records = read_fasta(tmp_path / name)
        assert [(r.id, r.description, r.sequence) for r in records] == [("a", "a desc", "MKVL"), ("b", "b", "WWY")]
    out = write_fasta(records, tmp_path / "written.fasta.gz")
    assert out.read_bytes()[:2] == b"\x1f\x8b" and read_fasta(out) == records


def test_write_samples_metadata_and_atomicity(tmp_path, domain, monkeypatch):
    meta = {"checkpoint": "runs/student a", "steps": 8, "sampler": "ancestral", "seed": 0}
    path = domain.write_samples(["MKV", "ACDEFGHIKLMNPQRSTVWY" * 4], tmp_path / "samples", meta)
    assert path == tmp_path / "samples.fasta"
    records = list(SeqIO.parse(path, "fasta"))
    assert [r.id for r in records] == ["sample_0", "sample_1"]
    assert str(records[1].seq) == "ACDEFGHIKLMNPQRSTVWY" * 4
    assert parse_metadata(records[0].description) == {k: str(v) for k, v in meta.items()}
    assert records[0].description == "sample_0 checkpoint=runs/student%20a steps=8 sampler=ancestral seed=0"
    good = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(StorageError, match="samples.fasta: disk full \\(any previous file is intact\\)"):
        domain.write_samples(["WWWW"], path, meta)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["samples.fasta"]


# -- variable length ---------------------------------------------------------------------------------------
def test_length_prefilled_init_masks_exactly_length(tok):
    z = length_prefilled_init([0, 3, 6, 50], 8, tok)
    assert z.shape == (4, 8) and z.dtype == torch.long
    assert (z == MASK).sum(-1).tolist() == [0, 3, 6, 6]  # clipped to seq_len - 2
    assert z[1].tolist() == [BOS, MASK, MASK, MASK, EOS, PAD, PAD, PAD]
    assert z[0].tolist() == [BOS, EOS, PAD, PAD, PAD, PAD, PAD, PAD]
    assert z[2].tolist() == [BOS, *[MASK] * 6, EOS]


def test_sampled_mode_generates_exactly_the_drawn_lengths(domain):
    assert domain.initial_state(4, 64) is None  # learned EOS
    sampled = ProteinDomain(length_mode="sampled")
    z1 = sampled.initial_state(16, 64, torch.Generator().manual_seed(0))
    z2 = sampled.initial_state(16, 64, torch.Generator().manual_seed(0))
    assert torch.equal(z1, z2)
    lengths = (z1 == MASK).sum(-1)
    train_lengths = set(sampled.length_distribution("train").tolist())
    assert all(1 <= n <= 62 and n in train_lengths for n in lengths.tolist())
    tok = sampled.tokenizer()

    def eos_loving(z, sigma):  # a denoiser that would end every protein at once, as a learned-EOS model may
        logits = torch.zeros((*z.shape, tok.vocab_size))
        logits[..., tok.eos_id] = 10.0
        return logits

    def draw(forbidden):
        return sample(eos_loving, num_samples=16, seq_len=64, steps=4, mask_id=tok.mask_id, z_init=z1,
                      forbidden_tokens=forbidden, generator=torch.Generator().manual_seed(1)).ids

    assert domain.forbidden_tokens() == ()  # learned mode draws EOS and PAD
    assert set(sampled.forbidden_tokens()) == {tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id}
    assert max(len(s) for s in sampled.decode_samples(draw(()))) < 8  # without the constraint: cut short
    assert [len(s) for s in sampled.decode_samples(draw(sampled.forbidden_tokens()))] == lengths.tolist()
    with pytest.raises(ConfigError, match="length_mode"):
        ProteinDomain(length_mode="fixed")


def test_length_mode_is_a_validated_setting_and_the_environment_is_ignored(monkeypatch):
    from discdistill import plugins

    monkeypatch.setenv("DISCDISTILL_PROTEIN_LENGTH_MODE", "sampled")  # the variable of older versions: no effect
    assert ProteinDomain().length_mode == "learned"
    assert plugins.get_domain("protein", {"length_mode": "sampled"}).settings.length_mode == "sampled"
    assert plugins.get_domain("protein").length_mode == "learned"  # one instance per settings
    with pytest.raises(ConfigError, match=r"domain 'protein' has no setting 'lenght_mode'; its settings: .*length_mode"):
        plugins.get_domain("protein", {"lenght_mode": "sampled"})
    domain = ProteinDomain()
    domain.length_mode = "sampled"
    assert domain.settings.length_mode == "sampled"
    assert domain.initial_state(2, 32, torch.Generator().manual_seed(0)).shape == (2, 32)
    with pytest.raises(ConfigError, match="length_mode"):
        domain.length_mode = "fixed"


def test_sample_lengths_conditions_on_fitting():
    drawn = sample_lengths([5, 10, 500], 200, max_length=20, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {5, 10}
    assert set(sample_lengths([500, 600], 5, max_length=20).tolist()) == {20}


# -- metrics ------------------------------------------------------------------------------------------------
def test_composition_divergences():
    seqs = ["MKVLAAG", "WWYYACD"]
    assert M.aa_composition_js(seqs, list(reversed(seqs))) == 0.0
    assert M.aa_composition_js(["AAAA"], ["CCCC"]) == pytest.approx(1.0)
    # P = (1/2, 1/2), Q = (1, 0): JS = 1/2 KL(P||M) + 1/2 KL(Q||M), M = (3/4, 1/4)
    expected = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    assert M.aa_composition_js(["AC"], ["AA"]) == pytest.approx(expected)
    assert M.dipeptide_js(seqs, seqs) == 0.0 and M.dipeptide_js(["AAA"], ["CCC"]) == pytest.approx(1.0)
    assert math.isnan(M.aa_composition_js([], ["A"]))


def test_length_wasserstein():
    assert M.wasserstein1([1, 2, 3], [2, 3, 4]) == pytest.approx(1.0)
    assert M.wasserstein1([0, 10], [5]) == pytest.approx(5.0)
    assert M.length_wasserstein(["A", "AA", "AAA"], ["AA", "AAA", "AAAA"]) == pytest.approx(1 / 3)
    assert M.length_wasserstein(["MKV"], ["MKV"]) == 0.0


def test_homopolymer_and_low_complexity():
    assert M.homopolymer_rate(["AAAAA", "AAAAC", "ACDEFGHIK", "MKKKKKKL"]) == 0.5
    assert M.window_entropies("ACDEFGHIKLMN") == pytest.approx([math.log2(12)])
    assert M.low_complexity_rate(["A" * 12, "ACDEFGHIKLMN"]) == 0.5
    assert M.low_complexity_rate(["A" * 12 + "C"]) == 1.0  # entropies 0 and 0.41 bits
    assert M.low_complexity_rate(["ACDEFGHIKLMN" * 3]) == 0.0
    assert math.isnan(M.low_complexity_rate(["MKV"]))


def test_kmer_jaccard_diversity_and_novelty():
    assert M.pairwise_diversity(["ACDE", "ACDF"]) == pytest.approx(2 / 3)  # {ACD,CDE} vs {ACD,CDF}
    assert M.pairwise_diversity(["MKVLA", "MKVLA"]) == 0.0
    assert M.novelty(["ACDE"], ["ACDF", "WWWW"]) == pytest.approx(2 / 3)
    assert M.novelty(["MKVLA"], ["MKVLA"]) == 0.0
    rng = random.Random(3)
    a = ["".join(rng.choice("ACD") for _ in range(rng.randint(0, 12))) for _ in range(15)]
    b = ["".join(rng.choice("ACD") for _ in range(rng.randint(0, 12))) for _ in range(9)]

    def brute(x, y):
        sx = {x[i:i + 3] for i in range(len(x) - 2)}
        sy = {y[i:i + 3] for i in range(len(y) - 2)}
        return len(sx & sy) / len(sx | sy) if sx | sy else 1.0

    fast = M.jaccard_matrix(a, b)
    assert fast.ravel().tolist() == pytest.approx([brute(x, y) for x in a for y in b])
    assert 0 < fast.mean() < 1


def test_domain_metrics_and_plddt_hook(domain, monkeypatch):
    ref = domain.dataset("validation", 64)[:40]
    same = domain.metrics(ref, ref)
    assert same["aa_composition_js"] == 0.0 and same["dipeptide_js"] == 0.0
    assert same["length_wasserstein"] == 0.0 and same["novelty"] == 0.0
    assert same["eos_rate"] == pytest.approx((ref == EOS).any(-1).float().mean().item())
    assert same["homopolymer_rate"] == same["ref_homopolymer_rate"]
    assert all(isinstance(v, float) for v in same.values())
    train = domain.dataset("train", 64)[:40]
    other = domain.metrics(train, ref)
    assert other["aa_composition_js"] > 0 and other["novelty"] > 0.5 and other == domain.metrics(train, ref)
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
    assert M.plddt(["MKV"]) is None and domain.plddt(["MKV"]) is None
    M.set_plddt_predictor(lambda seqs: [70.0 + len(s) for s in seqs])
    try:
        assert domain.plddt(["MKV", "MK", ""]) == pytest.approx(72.5)
    finally:
        M.set_plddt_predictor(None)


# -- discovery ------------------------------------------------------------------------------------------------
def test_discovered_through_entry_point():
    discdistill.plugins.refresh()
    entry = discdistill.plugins.installed_domains()["protein"]
    assert entry.package == "discdistill-protein" and entry.domain_class is ProteinDomain
    found = discdistill.plugins.get_domain("protein")
    assert isinstance(found, ProteinDomain)
    assert (found.sample_suffix, found.default_preset, found.name) == (".fasta", "tiny", "protein")
