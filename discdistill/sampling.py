"""The one fused sampling loop for every denoiser (teacher, student) and every step rule (ancestral, RGAS).

    ids = sample(denoiser, num_samples=16, seq_len=128, steps=8, mask_id=V - 1).ids

Per step: one denoiser pass, the ancestral posterior, a categorical draw, carry-over of unmasked
positions. The time grid lives on the device and, on CUDA, the few-step path has static shapes and no
host synchronisation, so `ancestral_step` can be compiled and captured in a CUDA graph. On CPU the
categorical draw is made only at the positions that unmask (data-dependent shapes cost nothing there).

Decisions (see docs/architecture.md):
* The time grid is linspace(1, t_min, N + 1) and the *last* step goes to alpha_s = 1: every position
  still masked is filled from p(x_0 | z) (sampled, or argmax with ``noise_removal="argmax"``). Noise
  removal is fused into the last step, so NFE = steps exactly.
* A masked position's posterior is the mixture "stay masked w.p. (1 - alpha_s)/(1 - alpha_t), else a
  token from p(x_0 | z_t)", drawn as one Bernoulli plus one categorical. Same law as the full
  posterior over V + 1 outcomes, without materialising it.
* float64 (default): inverse-CDF sampling with float64 cumulative sums and uniforms; exact to 2^-53.
  float32: MDLM's joint exponential race ``argmax(q / E)`` over the full posterior q (stay-masked
  outcome included) with float32 noise, kept only to reproduce published numbers. float32 noise
  E = -log(u) is never below 2^-24, so an outcome whose probability is below about 6e-8 of the
  likeliest one is (almost) never drawn. With many steps the likeliest outcome is "stay masked"
  (probability 1 - 1/N), which pushes rare tokens into that zone and lowers entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from discdistill.diffusion import LogLinearSchedule, masked_log_probs, posterior_probs, subs_log_probs

Precision = Literal["float64", "float32"]
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Largest float64 scratch tensor (elements) built at once by inverse-CDF sampling, per device type.
#: CPU: 16 MiB stays in cache (measured 1.6x faster than 1 GiB chunks). CUDA: 1 GiB, so a [32, 1024, 50k]
#: draw is 13 launches rather than 800 (each chunk is a handful of kernels; see docs/benchmarks.md).
_CDF_CHUNK_ELEMENTS = {"cpu": 2**21, "cuda": 2**27}


def sample_categorical(probs: torch.Tensor, precision: Precision = "float64",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` [..., V] (unnormalised is fine) -> ids [...]."""
    if precision == "float32":
        noise = torch.rand(probs.shape, dtype=torch.float32, device=probs.device, generator=generator)
        exponential = 1e-10 - (noise + 1e-10).log()
        return (probs.float() / exponential).argmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    uniforms = torch.rand(flat.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    chunk = _CDF_CHUNK_ELEMENTS.get(probs.device.type, _CDF_CHUNK_ELEMENTS["cpu"])
    rows_per_chunk = max(1, chunk // flat.shape[-1])
    draws = [torch.empty(0, 1, dtype=torch.long, device=probs.device)]  # zero rows: nothing to draw
    for start in range(0, flat.shape[0], rows_per_chunk):
        cdf = flat[start:start + rows_per_chunk].double().cumsum(-1)
        target = uniforms[start:start + rows_per_chunk] * cdf[:, -1:]
        draws.append(torch.searchsorted(cdf, target, right=True).clamp_(max=flat.shape[-1] - 1))
    return torch.cat(draws).reshape(probs.shape[:-1])


def sample_bernoulli(p: torch.Tensor, precision: Precision = "float64",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean draws with probabilities ``p`` (any shape)."""
    dtype = torch.float64 if precision == "float64" else torch.float32
    return torch.rand(p.shape, dtype=dtype, device=p.device, generator=generator) < p.to(dtype)


@dataclass
class StepContext:
    """Everything a step rule may use. Times are 0-d tensors on the device (no host sync)."""

    denoise: Denoise
    mask_id: int
    alpha_t: torch.Tensor
    alpha_s: torch.Tensor
    sigma_s: torch.Tensor
    index: int
    num_steps: int
    precision: Precision
    noise_removal: Literal["sample", "argmax"]
    generator: torch.Generator | None


@runtime_checkable
class FeatureDenoiser(Protocol):
    """A denoiser split in two (the DiT is one): trunk features, then the output layer at chosen positions.

    The sampler's CPU ancestral path uses it to run the V-way output layer only where tokens are drawn.
    """

    def features(self, z: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def logits_from_features(self, h: torch.Tensor, c: torch.Tensor, where: torch.Tensor) -> torch.Tensor: ...


class StepRule(Protocol):
    """z_t, denoiser logits at z_t -> z_s. `ancestral_step` is the default; RGAS supplies its own."""

    def __call__(self, z: torch.Tensor, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor: ...


def ancestral_step(z: torch.Tensor, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """One ancestral step t -> s at the masked positions of z; unmasked positions are copied.

    P(stay m) = (1 - alpha_s) / (1 - alpha_t);  P(v) = p(x_0 = v | z_t) (alpha_s - alpha_t) / (1 - alpha_t).
    """
    masked = z == ctx.mask_id
    if ctx.noise_removal == "argmax" and ctx.index == ctx.num_steps - 1:
        log_p = subs_log_probs(logits, z, ctx.mask_id)
        return torch.where(masked, log_p.argmax(-1), z)  # alpha_s = 1: nothing stays masked
    if ctx.precision == "float32":
        # MDLM's joint draw over V tokens + "stay masked": reproduces its truncated tail exactly.
        log_p = subs_log_probs(logits, z, ctx.mask_id)
        probs = posterior_probs(log_p, z, ctx.alpha_t.float(), ctx.alpha_s.float(), ctx.mask_id)
        return torch.where(masked, sample_categorical(probs, "float32", ctx.generator), z)
    stay_prob = (1.0 - ctx.alpha_s) / (1.0 - ctx.alpha_t)
    unmask = masked & ~sample_bernoulli(stay_prob.expand(z.shape), ctx.precision, ctx.generator)
    if z.is_cuda:  # static shapes: capturable in a CUDA graph, no host sync
        return torch.where(unmask, draw_at_every_position(logits, ctx), z)
    # CPU: a host sync is free, while a softmax and a float64 CDF over V at every position cost about
    # two forwards of a small network; only the positions that unmask this step need a token.
    where = unmask.nonzero(as_tuple=True)
    if not where[0].numel():  # common when steps >> L: nothing to draw, and an empty draw uses no randomness
        return z
    z_next = z.clone()
    z_next[where] = sample_categorical(masked_log_probs(logits[where], ctx.mask_id).exp_(), ctx.precision,
                                       ctx.generator)
    return z_next


def draw_at_every_position(logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """A token [B, L] from p(x_0 | z_t) at every position (static shapes, for CUDA graphs).

    Only masked positions keep their draw, and there the SUBS distribution is the softmax with the
    mask logit removed; the carry-over one-hots of `subs_log_probs` are never needed. Two passes over
    [B, L, V] in float32 (cast with the mask column removed, softmax) instead of seven.
    """
    masked_out = logits.to(torch.float32, copy=True)  # a copy even when float32: the caller's logits stay intact
    masked_out[..., ctx.mask_id] = float("-inf")
    return sample_categorical(masked_out.softmax(-1), ctx.precision, ctx.generator)


@dataclass
class SampleOutput:
    ids: torch.Tensor  # [B, L]
    nfe: int  # denoiser calls
    denoised_rows: int  # rows pushed through the denoiser (< nfe * B when the cache skips rows)


def time_grid(steps: int, t_min: float, device: torch.device | str) -> torch.Tensor:
    """linspace(1, t_min, steps + 1) on the device, float64 so alpha ratios are exact."""
    return torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64, device=device)


@torch.no_grad()
def sample(
    denoiser: Denoise,
    *,
    num_samples: int,
    seq_len: int,
    steps: int,
    mask_id: int,
    schedule: LogLinearSchedule = LogLinearSchedule(),
    precision: Precision = "float64",
    noise_removal: Literal["sample", "argmax"] = "sample",
    cache: bool = False,
    time_conditioned: bool = False,
    t_min: float = 1e-5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    step_rule: StepRule = ancestral_step,
    z_init: torch.Tensor | None = None,
    forbidden_tokens: Sequence[int] = (),
) -> SampleOutput:
    """Generate ``num_samples`` sequences of ``seq_len`` ids with ``steps`` denoiser passes.

    Args:
        denoiser: ``logits = denoiser(z, sigma)``, z [B, L] ids, sigma [B]; raw logits [B, L, V].
        cache: reuse the logits of rows that did not change since the previous step (MDLM's cache,
            per row). Pays off only when steps >> seq_len; costs one host sync per step, so it is
            off by default and refused for time-conditioned denoisers (their output depends on t).
        time_conditioned: pass sigma_t to the denoiser; otherwise sigma = 0, as MDLM does.
        step_rule: how z_t and the logits become z_s (`ancestral_step`, or RGAS's rule).
        z_init: start from this partly masked [B, L] state instead of all-mask (infilling, prompts).
        forbidden_tokens: ids never drawn at a masked position (their logits are set to -inf), e.g.
            a domain's special tokens when the lengths are fixed by ``z_init``.

    Returns ids with no mask left, and the number of denoiser calls.
    """
    assert steps >= 1 and seq_len >= 1 and num_samples >= 1
    if cache and time_conditioned:
        raise ValueError("cache=True needs a time-unconditioned denoiser (its output must not depend on t)")
    z = _initial_state(num_samples, seq_len, mask_id, z_init, device)
    forbidden_ids = [int(t) for t in forbidden_tokens]
    if any(not 0 <= t < mask_id for t in forbidden_ids):
        raise ValueError(f"forbidden_tokens must be token ids below the mask id {mask_id}, got {forbidden_ids}")
    forbidden = torch.tensor(forbidden_ids, dtype=torch.long, device=z.device)
    if _can_sample_sparse(denoiser, z, step_rule, precision):
        return _sample_sparse(denoiser, z, steps=steps, mask_id=mask_id, schedule=schedule, noise_removal=noise_removal,
                              cache=cache, time_conditioned=time_conditioned, t_min=t_min, generator=generator,
                              forbidden=forbidden)
    alphas, sigmas = alphas_and_sigmas(steps, t_min, schedule, device)
    zero_sigma = torch.zeros(num_samples, device=device)
    logits: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    nfe = rows = 0
    for i in range(steps):
        sigma = sigmas[i].expand(num_samples) if time_conditioned else zero_sigma
        if cache and logits is not None:
            changed = (z != previous).any(-1).nonzero().squeeze(1)  # host sync: many-step path only
            if changed.numel():
                logits[changed] = denoiser(z[changed], sigma[changed]).to(logits.dtype)
                nfe, rows = nfe + 1, rows + changed.numel()
        else:
            logits = denoiser(z, sigma)
            nfe, rows = nfe + 1, rows + num_samples
        previous = z
        ctx = StepContext(
            denoise=denoiser, mask_id=mask_id, alpha_t=alphas[i], alpha_s=alphas[i + 1],
            sigma_s=sigmas[i + 1], index=i, num_steps=steps, precision=precision,
            noise_removal=noise_removal, generator=generator,
        )
        z = step_rule(z, _forbid(logits, forbidden), ctx)
    return SampleOutput(ids=z, nfe=nfe, denoised_rows=rows)


def alphas_and_sigmas(steps: int, t_min: float, schedule: LogLinearSchedule,
                       device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha (float64) and sigma (float32) on the time grid; the last alpha is 1: the last step removes
    all remaining noise (fused noise removal)."""
    grid = time_grid(steps, t_min, device)
    alphas = schedule.alpha(grid)
    alphas[-1] = 1.0
    return alphas, schedule.sigma(grid).float()


def _initial_state(num_samples: int, seq_len: int, mask_id: int, z_init: torch.Tensor | None,
                   device: torch.device | str) -> torch.Tensor:
    """All-mask [B, L], or a copy of ``z_init`` on the device."""
    if z_init is None:
        return torch.full((num_samples, seq_len), mask_id, dtype=torch.long, device=device)
    assert z_init.shape == (num_samples, seq_len), "z_init must be [num_samples, seq_len]"
    return z_init.to(device=device, dtype=torch.long).clone()


def _can_sample_sparse(denoiser: Denoise, z: torch.Tensor, step_rule: StepRule, precision: Precision) -> bool:
    """The sparse path: CPU, plain ancestral steps, float64 draws, a denoiser split in two."""
    return (z.device.type == "cpu" and step_rule is ancestral_step and precision == "float64"
            and isinstance(denoiser, FeatureDenoiser))


def _sample_sparse(denoiser: FeatureDenoiser, z: torch.Tensor, *, steps: int, mask_id: int,
                   schedule: LogLinearSchedule, noise_removal: Literal["sample", "argmax"], cache: bool,
                   time_conditioned: bool, t_min: float, generator: torch.Generator | None,
                   forbidden: torch.Tensor) -> SampleOutput:
    """`sample` with `ancestral_step` on CPU, running the network only where a token is drawn.

    Per step the positions that unmask are drawn first (the Bernoulli of the ancestral posterior does
    not depend on the logits); then the trunk runs only on the rows that draw a token this step, and the
    V-way output layer only at the drawn positions. With N steps over L positions that is about L / N
    positions a step, so the output layer, which dominates small models with a large vocabulary, costs
    one full pass over the whole run instead of N, and with N >> L most steps skip most rows' trunk
    (exact, also for time-conditioned denoisers: a row's features are computed at the step that uses
    them). The random draws are made in the same order as `ancestral_step`'s CPU path, so both give the
    same ids (up to float rounding in the smaller matmuls). With ``cache`` a row's trunk features are
    reused while the row has not changed since they were computed.
    """
    num_samples = z.shape[0]
    alphas, sigmas = alphas_and_sigmas(steps, t_min, schedule, z.device)
    zero_sigma = torch.zeros(num_samples, device=z.device)
    features: tuple[torch.Tensor, torch.Tensor] | None = None  # per row, computed at state `featured`
    featured = torch.full_like(z, -1)  # with the cache: the state each row's features were computed at
    nfe = rows = 0
    for i in range(steps):
        masked = z == mask_id
        last = i == steps - 1
        if last and noise_removal == "argmax":
            unmask = masked
        else:
            stay_prob = (1.0 - alphas[i + 1]) / (1.0 - alphas[i])
            unmask = masked & ~sample_bernoulli(stay_prob.expand(z.shape), "float64", generator)
        needed = unmask.any(-1)
        stale = needed & (z != featured).any(-1) if cache else needed
        run = stale.nonzero().squeeze(1)
        if run.numel():
            sigma = sigmas[i].expand(num_samples) if time_conditioned else zero_sigma
            features = _update_features(denoiser, features, z, sigma, run)
            if cache:
                featured[run] = z[run]
            nfe, rows = nfe + 1, rows + run.numel()
        if not needed.any():
            continue
        where = unmask.nonzero(as_tuple=True)
        logits = _forbid(denoiser.logits_from_features(*features, unmask), forbidden)
        log_p = masked_log_probs(logits, mask_id)  # every drawn position is masked: no carry-over needed
        z = z.clone()
        if last and noise_removal == "argmax":
            z[where] = log_p.argmax(-1)
        else:
            z[where] = sample_categorical(log_p.exp_(), "float64", generator)
    return SampleOutput(ids=z, nfe=nfe, denoised_rows=rows)


def _forbid(logits: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """``logits`` [..., V] with the ``forbidden`` ids at -inf (a new tensor: the caller's may be cached)."""
    return logits.index_fill(-1, forbidden, float("-inf")) if forbidden.numel() else logits


def _update_features(denoiser: FeatureDenoiser, features: tuple[torch.Tensor, torch.Tensor] | None,
                     z: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trunk features (h [B, L, H], c [B, C]) with ``rows`` recomputed at z; the whole batch in one call if all."""
    if rows.numel() == z.shape[0]:
        return denoiser.features(z, sigma)
    h_new, c_new = denoiser.features(z[rows], sigma[rows])
    if features is None:  # first pass covers some rows only: the others are filled before they are read
        features = (h_new.new_zeros((z.shape[0], *h_new.shape[1:])), c_new.new_zeros((z.shape[0], *c_new.shape[1:])))
    features[0][rows], features[1][rows] = h_new.to(features[0].dtype), c_new.to(features[1].dtype)
    return features
