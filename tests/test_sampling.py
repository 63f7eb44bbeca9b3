"""The fused sampling loop: exact posterior frequencies, precision, caching, no host syncs."""


import pytest
import torch

from discdistill.diffusion import posterior_probs, subs_log_probs
from discdistill.sampling import StepContext, ancestral_step, draw_at_every_position, sample, sample_categorical
from tests.conftest import small_dit

V, MASK = 5, 4
# chi-square 0.999 quantile for 4 degrees of freedom (5 outcomes): a correct sampler fails 1 in 1000 seeds
CHI2_4_999 = 18.467


def fixed_denoiser(table: torch.Tensor):
    """Logits that depend only on the position: p(x0 | z) is known exactly."""
    return lambda z, sigma: table.expand(z.shape[0], *table.shape)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "an outcome of probability 0 was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def context(alpha_t: float, alpha_s: float, precision="float64", seed=0) -> StepContext:
    return StepContext(denoise=None, mask_id=MASK, alpha_t=torch.tensor(alpha_t, dtype=torch.float64),
                       alpha_s=torch.tensor(alpha_s, dtype=torch.float64), sigma_s=torch.tensor(0.0), index=0,
                       num_steps=2, precision=precision, noise_removal="sample",
                       generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_ancestral_step_matches_exact_posterior(precision):
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5, 3.0], [2.0, 2.0, 0.0, -3.0, 0.0]])
    z = torch.full((20000, 2), MASK)
    z_next = ancestral_step(z, logits.expand(20000, 2, V), context(0.3, 0.6, precision))
    exact = posterior_probs(subs_log_probs(logits[None], z[:1], MASK).double(), z[:1], 0.3, 0.6, MASK)[0]
    for position in range(2):
        counts = torch.bincount(z_next[:, position], minlength=V).double()
        assert chi_square(counts, exact[position]) < CHI2_4_999


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_shape_draw_follows_subs_at_masked_positions(dtype):
    """The CUDA branch's draw (every position, mask logit removed) has SUBS's law where z is masked,
    never draws the mask, and leaves the caller's logits untouched."""
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5, 3.0], [2.0, 2.0, 0.0, -3.0, 0.0]], dtype=dtype)
    batch = logits.expand(20000, 2, V).contiguous()
    before = batch.clone()
    tokens = draw_at_every_position(batch, context(0.3, 0.6))
    assert torch.equal(batch, before)
    assert tokens.shape == (20000, 2) and not (tokens == MASK).any()
    exact = subs_log_probs(logits[None].float(), torch.full((1, 2), MASK), MASK)[0].exp().double()
    for position in range(2):
        counts = torch.bincount(tokens[:, position], minlength=V).double()
        assert chi_square(counts, exact[position]) < CHI2_4_999


@pytest.mark.parametrize("sparse", [False, True])
def test_forbidden_tokens_are_never_drawn(sparse):
    """A denoiser that strongly prefers ids 0 and 1: forbidden, they never appear at masked positions,
    on the dense loop and on the CPU output-layer path; given tokens (z_init) are kept even if forbidden."""
    model = small_dit(V, MASK, 8)
    with torch.no_grad():
        model.output_layer.linear.bias[:2] += 50.0
    denoiser = model if sparse else (lambda z, sigma: model(z, sigma))
    z_init = torch.full((64, 8), MASK)
    z_init[:, 0] = 0  # a given (unmasked) token may be a forbidden id
    with torch.no_grad():
        free = sample(denoiser, num_samples=64, seq_len=8, steps=4, mask_id=MASK, z_init=z_init,
                      generator=torch.Generator().manual_seed(0)).ids
        kept = sample(denoiser, num_samples=64, seq_len=8, steps=4, mask_id=MASK, z_init=z_init,
                      forbidden_tokens=[0, 1], generator=torch.Generator().manual_seed(0)).ids
    assert (free[:, 1:] < 2).float().mean() > 0.9  # the preference is real
    assert (kept[:, 0] == 0).all() and not (kept[:, 1:] < 2).any() and not (kept == MASK).any()
    with pytest.raises(ValueError, match="forbidden_tokens"):
        sample(denoiser, num_samples=1, seq_len=8, steps=1, mask_id=MASK, forbidden_tokens=[MASK])


def test_unmasked_positions_are_carried_over():
    z = torch.tensor([[0, MASK, 3, MASK]] * 50)
    z_next = ancestral_step(z, torch.randn(50, 4, V), context(0.5, 0.9))
    assert (z_next[:, 0] == 0).all() and (z_next[:, 2] == 3).all()


def test_one_step_sampling_draws_from_p_x0_and_removes_all_noise():
    table = torch.tensor([[0.0, 1.0, 2.0, -1.0, 5.0]])
    out = sample(fixed_denoiser(table), num_samples=20000, seq_len=1, steps=1, mask_id=MASK,
                 generator=torch.Generator().manual_seed(0))
    assert out.nfe == 1 and (out.ids != MASK).all()
    probs = torch.softmax(table[0, :4].double(), 0)
    counts = torch.bincount(out.ids[:, 0], minlength=V)[:4].double()
    assert chi_square(counts, probs) < 16.266  # 3 degrees of freedom, 0.999


def test_many_steps_nfe_and_no_mask_left():
    table = torch.randn(6, V)
    out = sample(fixed_denoiser(table), num_samples=4, seq_len=6, steps=16, mask_id=MASK)
    assert out.nfe == 16 and out.denoised_rows == 64 and (out.ids != MASK).all()


def test_argmax_noise_removal_fills_with_the_mode():
    table = torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0]]).expand(8, V)
    out = sample(fixed_denoiser(table), num_samples=64, seq_len=8, steps=1, mask_id=MASK, noise_removal="argmax")
    assert (out.ids == 1).all()


def test_z_init_keeps_given_tokens():
    z_init = torch.tensor([[MASK, 2, MASK, 0]] * 3)
    out = sample(fixed_denoiser(torch.randn(4, V)), num_samples=3, seq_len=4, steps=3, mask_id=MASK, z_init=z_init)
    assert (out.ids[:, 1] == 2).all() and (out.ids[:, 3] == 0).all() and (out.ids != MASK).all()


def context_denoiser(z, sigma):
    """Row-wise and elementwise only (bitwise identical on any subset of rows), depends on the whole row."""
    counts = torch.nn.functional.one_hot(z, V).double().sum(1, keepdim=True)  # [B, 1, V]
    positions = torch.arange(z.shape[1], dtype=torch.float64)[None, :, None]
    return torch.sin(positions * torch.arange(V, dtype=torch.float64)) + 0.7 * counts


def test_cached_and_uncached_sampling_are_identical():
    kwargs = dict(num_samples=6, seq_len=5, steps=64, mask_id=MASK)
    plain = sample(context_denoiser, generator=torch.Generator().manual_seed(3), **kwargs)
    cached = sample(context_denoiser, generator=torch.Generator().manual_seed(3), cache=True, **kwargs)
    assert torch.equal(plain.ids, cached.ids)
    assert cached.denoised_rows < plain.denoised_rows  # 64 steps, 5 tokens: most steps change nothing
    with pytest.raises(ValueError, match="time-unconditioned"):
        sample(context_denoiser, cache=True, time_conditioned=True, **kwargs)


def test_few_step_path_never_syncs_with_the_host(monkeypatch):
    """.item(), bool() and .tolist() are the host syncs; the uncached loop must use none of them."""
    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the sampling loop")

    for name in ("item", "__bool__", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = sample(context_denoiser, num_samples=2, seq_len=5, steps=4, mask_id=MASK)
    monkeypatch.undo()
    assert (out.ids != MASK).all()


def test_float32_sampling_truncates_the_tail_and_float64_does_not():
    """Rare outcomes at 1e-8 of the likeliest one: float32 noise (E >= 2^-24) almost never draws them.

    One outcome has probability ~1, K others 1e-8 each: float64 draws the K at rate K * 1e-8 (6
    expected here); float32's exponential race needs E_top > 6 to let one through, so it draws them
    at about 1/70 of that rate. This truncated tail (Zheng et al. 2024) is what lowers the entropy of
    many-step float32 samplers, where "stay masked" is the likeliest outcome.
    """
    rows, tail, rate, batches = 15_000, 2_000, 1e-8, 20
    probs = torch.full((1, tail + 1), rate)
    probs[0, 0] = 1.0
    drawn = {}
    for precision in ("float64", "float32"):
        generator = torch.Generator().manual_seed(0)
        drawn[precision] = sum(int((sample_categorical(probs.expand(rows, -1), precision, generator) > 0).sum())
                               for _ in range(batches))
    expected = rows * tail * rate * batches  # 6
    assert 2 <= drawn["float64"] <= 14  # Poisson(6): within about 3 sigma
    assert drawn["float32"] == 0  # Poisson(~0.1)


def test_sample_categorical_draws_do_not_depend_on_the_chunk_size(monkeypatch):
    """The float64 inverse-CDF scratch is chunked (per device type); chunks change memory, not draws."""
    from discdistill import sampling

    probs = torch.rand(37, 11, dtype=torch.float64) ** 4  # unnormalised, uneven
    draws = {}
    for chunk in (2**21, 11, 3 * 11, 5):  # one chunk; one row a chunk; three rows; below one row
        monkeypatch.setitem(sampling._CDF_CHUNK_ELEMENTS, "cpu", chunk)
        draws[chunk] = sample_categorical(probs, "float64", torch.Generator().manual_seed(3))
    for chunk, ids in draws.items():
        assert torch.equal(ids, draws[2**21]), chunk
    assert draws[2**21].unique().numel() > 5  # a real draw, not a constant


def test_sample_categorical_with_no_rows_draws_nothing():
    draws = sample_categorical(torch.ones(0, 7))
    assert draws.shape == (0,) and draws.dtype == torch.long


def test_generate_turns_the_exact_cache_on_only_when_steps_exceed_length(monkeypatch):
    from discdistill import workflows
    from discdistill.config import SamplingConfig

    seen = []
    real_sample = workflows.sample
    monkeypatch.setattr(workflows, "sample", lambda *a, **kw: seen.append(kw["cache"]) or real_sample(*a, **kw))
    model = type("Denoiser", (), {"seq_len": 5, "mask_id": MASK, "__call__": staticmethod(context_denoiser)})()
    runs = {}
    for steps, cache in [(64, None), (64, False), (4, None), (64, True)]:
        config = SamplingConfig(steps=steps, num_samples=3, batch_size=3, cache=cache)
        runs[steps, cache] = workflows.generate(model, config, device=torch.device("cpu")).ids
    assert seen == [True, False, False, True]
    assert torch.equal(runs[64, None], runs[64, False])  # exact: same samples for one seed


@pytest.mark.parametrize("steps, cache, noise_removal", [(1, False, "sample"), (4, False, "sample"),
                                                         (30, True, "sample"), (6, False, "argmax")])
def test_sparse_output_layer_path_gives_the_dense_ids(steps, cache, noise_removal, monkeypatch):
    """On CPU a DiT's output layer runs only where tokens are drawn; the ids equal the dense loop's."""
    model = small_dit(V, MASK, 12)
    dense = lambda z, sigma: model(z, sigma)  # noqa: E731 - a plain callable takes the dense path
    rows_scored = []
    original = type(model).logits_from_features

    def counting(self, h, c, where):
        rows_scored.append(int(where.sum()))
        return original(self, h, c, where)

    monkeypatch.setattr(type(model), "logits_from_features", counting)
    kwargs = dict(num_samples=5, seq_len=12, steps=steps, mask_id=MASK, cache=cache, noise_removal=noise_removal)
    with torch.no_grad():
        sparse_out = sample(model, generator=torch.Generator().manual_seed(7), **kwargs)
        dense_out = sample(dense, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(sparse_out.ids, dense_out.ids)
    assert sparse_out.nfe <= dense_out.nfe and sparse_out.denoised_rows <= dense_out.denoised_rows
    assert len(rows_scored) <= steps and sum(rows_scored) == 5 * 12  # each position scored once, when drawn
    assert all(rows_scored)  # the output layer runs only in steps that draw
    if steps > 12:  # most steps draw nothing in most rows: their trunk is skipped too
        assert sparse_out.denoised_rows < dense_out.denoised_rows


def test_sparse_path_runs_the_trunk_only_for_rows_that_draw(monkeypatch):
    """Time-conditioned (no cache possible), 64 steps over 6 positions: each trunk row computed serves
    at least one draw, so rows pushed <= positions, while the dense loop pushes steps x rows; the ids
    agree, and every pass saw the sigma of its own step."""
    model = small_dit(V, MASK, 6)
    sigmas_seen = []
    original = type(model).features

    def recording(self, z, sigma):
        sigmas_seen.append(sigma.clone())
        return original(self, z, sigma)

    kwargs = dict(num_samples=4, seq_len=6, steps=64, mask_id=MASK, time_conditioned=True)
    with torch.no_grad():
        dense_out = sample(lambda z, sigma: model(z, sigma), generator=torch.Generator().manual_seed(1), **kwargs)
        monkeypatch.setattr(type(model), "features", recording)
        sparse_out = sample(model, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(sparse_out.ids, dense_out.ids)
    assert dense_out.denoised_rows == 64 * 4
    assert sparse_out.denoised_rows <= 4 * 6 and sparse_out.nfe == len(sigmas_seen) < 64
    assert all(s.unique().numel() == 1 and s[0] > 0 for s in sigmas_seen)  # one step's sigma per pass
