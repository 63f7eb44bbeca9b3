"""The synthetic Markov domain: exact likelihood by hand, determinism, registration, sample files."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from discdistill.builtin.markov import MarkovChain, MarkovDomain
from discdistill.errors import DataError
from discdistill.plugins import get_domain, installed_domains, refresh


def test_two_state_chain_by_hand():
    chain = MarkovChain([[0.9, 0.1], [0.5, 0.5]])
    # stationary: pi_1 = 0.1 pi_0 + 0.5 pi_1 -> pi = (5/6, 1/6)
    assert torch.allclose(chain.stationary, torch.tensor([5 / 6, 1 / 6], dtype=torch.float64))
    ids = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0]])
    expected = torch.tensor([
        math.log(5 / 6) + math.log(0.9) + math.log(0.1) + math.log(0.5),
        math.log(1 / 6) + math.log(0.5) + math.log(0.1) + math.log(0.5),
    ], dtype=torch.float64)
    assert torch.allclose(chain.log_likelihood(ids), expected)
    h_rate = -(5 / 6 * (0.9 * math.log(0.9) + 0.1 * math.log(0.1)) + 1 / 6 * math.log(0.5))
    assert chain.entropy_rate == pytest.approx(h_rate)
    h_pi = -(5 / 6 * math.log(5 / 6) + 1 / 6 * math.log(1 / 6))
    assert chain.expected_nll_per_token(4) == pytest.approx((h_pi + 3 * h_rate) / 4)


def test_domain_true_nll_per_token_by_hand():
    domain = MarkovDomain()
    chain = domain.chain
    ids = torch.tensor([[3, 7, 7, 0]])
    by_hand = -(math.log(chain.stationary[3]) + math.log(chain.transition[3, 7]) + math.log(chain.transition[7, 7])
                + math.log(chain.transition[7, 0])) / 4
    assert float(domain.true_nll_per_token(ids)[0]) == pytest.approx(by_hand)
    with pytest.raises(DataError):
        domain.true_nll_per_token(torch.tensor([[3, 16]]))  # a mask left in a sample


def test_chain_is_peaked_and_every_transition_possible():
    chain = MarkovDomain().chain
    assert torch.allclose(chain.transition.sum(-1), torch.ones(16, dtype=torch.float64))
    assert bool((chain.transition > 0).all())
    assert chain.entropy_rate < 1.0 < chain.stationary_entropy  # strong correlations
    assert torch.allclose(chain.stationary @ chain.transition, chain.stationary, atol=1e-12)


def test_dataset_is_deterministic_and_matches_the_chain():
    domain = MarkovDomain()
    a = domain.dataset("train", 32, num=4000)
    assert a.shape == (4000, 32) and a.dtype == torch.long
    assert torch.equal(a, MarkovDomain().dataset("train", 32, num=4000))
    assert not torch.equal(a[:100], domain.dataset("validation", 32, num=100))
    assert int(a.max()) < 16
    # empirical NLL per token of data is the expected value (H(pi) + (L-1) H) / L within noise
    nll = domain.true_nll_per_token(a)
    assert float(nll.mean()) == pytest.approx(domain.chain.expected_nll_per_token(32), abs=4 * float(nll.std()) / 63)
    freq = torch.bincount(a.flatten(), minlength=16).double() / a.numel()
    assert torch.allclose(freq, domain.chain.stationary, atol=0.01)
    with pytest.raises(DataError):
        domain.dataset("test", 32)


def test_metrics_separate_data_from_independent_tokens():
    domain = MarkovDomain()
    data = domain.dataset("validation", 32, num=500)
    shuffled = data.flatten()[torch.randperm(data.numel(), generator=torch.Generator().manual_seed(0))].reshape(500, 32)
    m_data, m_shuffled = domain.metrics(data, data), domain.metrics(shuffled)
    assert m_data["true_nll_per_token"] < 1.0 < 3.0 < m_shuffled["true_nll_per_token"]
    by_hand = [-sum(c / 32 * math.log(c / 32) for c in Counter(row.tolist()).values()) for row in data]
    assert m_data["unigram_entropy"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-12)  # independent count
    train = domain.dataset("train", 32, num=500)  # another split: close to, not equal to, the validation value
    assert domain.metrics(data, train)["reference_unigram_entropy"] == pytest.approx(m_data["unigram_entropy"], abs=0.05)


def test_registered_as_builtin_plugin():
    refresh()
    assert "markov" in installed_domains()
    domain = get_domain("markov")
    assert isinstance(domain, MarkovDomain) and domain.default_seq_len == 32
    tok = domain.tokenizer()
    assert tok.vocab_size == 17 and tok.mask_id == 16
    assert tok.decode(tok.encode("abc_p")) == "abc_p"


def test_write_samples_and_read_back(tmp_path):
    domain = MarkovDomain()
    ids = domain.dataset("validation", 8, num=3)
    path = domain.write_samples(domain.decode_samples(ids), tmp_path / "samples.jsonl", {"steps": 4})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == ids.tolist()
    assert json.loads((tmp_path / "samples.jsonl.meta.json").read_text()) == {"steps": 4}
    assert torch.equal(domain.dataset("train", 8, source=str(path)), ids)
    (tmp_path / "bad.jsonl").write_text("[1, 2, 99]\n")
    with pytest.raises(DataError):
        domain.dataset("train", 3, source=str(tmp_path / "bad.jsonl"))
