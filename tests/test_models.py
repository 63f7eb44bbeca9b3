"""The DiT backbone: shapes, soft input, initialisation, parameter count, precision, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from discdistill.config import ModelConfig, model_config_from_preset
from discdistill.errors import ModelMismatchError
from discdistill.interfaces import MaskedDiffusionTeacher
from discdistill.models import DiT

V, L, B = 11, 8, 3


def tiny_config(**fields: object) -> ModelConfig:
    base = dict(vocab_size=V, mask_id=V - 1, seq_len=L, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16,
                dropout=0.0)
    return ModelConfig(**{**base, **fields})


def randomised(model: DiT, seed: int = 0) -> DiT:
    """Move every parameter off its (mostly zero) initialisation so outputs are informative."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture
def model() -> DiT:
    torch.manual_seed(0)
    return randomised(DiT(tiny_config()))


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))


def test_contract_properties() -> None:
    m = DiT(tiny_config())
    assert isinstance(m, MaskedDiffusionTeacher)
    assert (m.vocab_size, m.seq_len, m.mask_id) == (V, L, V - 1)
    assert isinstance(m.blocks, torch.nn.ModuleList) and len(m.blocks) == 2
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_shapes_ids_and_features(model: DiT, ids: torch.Tensor) -> None:
    logits = model(ids, torch.zeros(B))
    assert logits.shape == (B, L, V) and logits.dtype == torch.float32
    h, c = model.features(ids, torch.zeros(B))
    assert h.shape == (B, L, 32) and c.shape == (B, 16)
    torch.testing.assert_close(model.output_layer(h, c), logits, rtol=0, atol=0)


def test_soft_one_hot_equals_ids(model: DiT, ids: torch.Tensor) -> None:
    sigma = torch.rand(B)
    soft = F.one_hot(ids, V).float()
    torch.testing.assert_close(model(soft, sigma), model(ids, sigma), rtol=1e-6, atol=1e-6)


def test_soft_input_is_differentiable(model: DiT, ids: torch.Tensor) -> None:
    probs = torch.softmax(torch.randn(B, L, V), -1).requires_grad_(True)
    model(probs, torch.zeros(B))[..., 0].sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


def test_sigma_scalar_broadcasts_and_conditions(model: DiT, ids: torch.Tensor) -> None:
    torch.testing.assert_close(model(ids, 0.5), model(ids, torch.full((B,), 0.5)))
    assert not torch.allclose(model(ids, 0.0), model(ids, 2.0))


def test_adaln_zero_init_is_identity_and_uniform() -> None:
    """adaLN-Zero (MDLM): gates and the output projection start at 0, so blocks are the identity and logits are 0."""
    torch.manual_seed(0)
    m = DiT(tiny_config(dropout=0.1)).eval()
    z = torch.randint(0, V, (B, L))
    h, _ = m.features(z, torch.rand(B))
    torch.testing.assert_close(h, m.vocab_embed.embedding[z], rtol=0, atol=0)
    assert torch.equal(m(z, torch.rand(B)), torch.zeros(B, L, V))


def test_eval_is_deterministic_and_dropout_acts_in_training(ids: torch.Tensor) -> None:
    torch.manual_seed(0)
    m = randomised(DiT(tiny_config(dropout=0.5)))
    assert torch.equal(m(ids, torch.zeros(B)), m(ids, torch.zeros(B)))
    m.train()
    assert not torch.equal(m(ids, torch.zeros(B)), m(ids, torch.zeros(B)))


def test_same_seed_same_weights() -> None:
    torch.manual_seed(3)
    a = DiT(tiny_config())
    torch.manual_seed(3)
    b = DiT(tiny_config())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bf16_autocast_forward(model: DiT, ids: torch.Tensor) -> None:
    reference = model(ids, torch.zeros(B))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, torch.zeros(B))
        h, c = model.features(ids, torch.zeros(B))
    assert h.dtype == torch.float32 and c.dtype == torch.float32  # residual stream and condition stay float32
    assert torch.isfinite(logits).all()
    scale = reference.abs().max()
    assert (logits.float() - reference).abs().max() < 0.05 * scale


def test_logits_at_under_cpu_autocast_runs_every_position(model: DiT, ids: torch.Tensor,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CPU bf16 autocast the output layer sees a fixed [B, L] shape (oneDNN caches a kernel per shape,
    so a changing masked-row count would grow memory), and the result still equals forward(z)[where]."""
    where = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    shapes = []
    monkeypatch.setattr(model.output_layer, "forward", _recording(model.output_layer.forward, shapes))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(ids, torch.zeros(B))
        picked = model.logits_at(ids, torch.zeros(B), where)
    assert torch.equal(picked, full[where]) and shapes[-1][:2] == (B, L)
    shapes.clear()
    model.logits_at(ids, torch.zeros(B), where)  # float32: only the chosen positions
    assert shapes[-1][0] == int(where.sum())


def _recording(forward, shapes):
    def wrapped(h, c):
        shapes.append(tuple(h.shape))
        return forward(h, c)
    return wrapped


def test_shorter_sequences_ok_longer_refused(model: DiT) -> None:
    assert model(torch.zeros(1, L // 2, dtype=torch.long), 0.0).shape == (1, L // 2, V)
    with pytest.raises(ModelMismatchError):
        model(torch.zeros(1, L + 1, dtype=torch.long), 0.0)


def test_rotary_makes_attention_position_aware(model: DiT, ids: torch.Tensor) -> None:
    """Without positions a transformer is permutation-equivariant; rotary must break that."""
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(2))
    permuted_output = model(ids[:, perm], 0.0)
    assert not torch.allclose(permuted_output, model(ids, 0.0)[:, perm], atol=1e-4)


def small_parameter_count(V: int, H: int, n_blocks: int, C: int, r: int = 4, freq: int = 256) -> int:
    """Hand count of MDLM's DiT parameters."""
    embed = V * H
    sigma_map = freq * C + C + C * C + C
    block = H + 3 * H * H + H * H + H + (H * r * H + r * H) + (r * H * H + H) + (C * 6 * H + 6 * H)
    output = H + (H * V + V) + (C * 2 * H + 2 * H)
    return embed + sigma_map + n_blocks * block + output


def test_small_preset_parameter_count() -> None:
    config = model_config_from_preset("small", vocab_size=50258, mask_id=50257, seq_len=1024)
    with torch.device("meta"):  # no memory, no forward
        m = DiT(config)
    count = sum(p.numel() for p in m.parameters())
    assert count == small_parameter_count(50258, 768, 12, 128) == 169_627_218
    assert 165_000_000 <= count <= 175_000_000
