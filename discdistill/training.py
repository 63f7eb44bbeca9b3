"""Teacher pre-training: the MDLM ELBO on token blocks, with exact resume.

    loss = E_t [ (1 - eps)/(1 - alpha_t) * sum_{j: z_j = m} -log p(x_j | z_t) ] / L      (diffusion.mdlm_loss)

Output directory layout::

    OUT/model/            the teacher (save_pretrained): what `sample` and `train` read
    OUT/checkpoint/       training state (weights, AdamW, schedule, RNG, step) for --resume
    OUT/metrics.jsonl     one JSON line per logged step / validation
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from discdistill.checkpoint import load_latest_training_state, save_pretrained, save_training_state
from discdistill.backbones import backbone_named
from discdistill.config import FSDP_PRESETS, PretrainConfig
from discdistill.data import EpochBatches
from discdistill.diffusion import LogLinearSchedule, antithetic_times, mdlm_loss_at_masked, nats_to_bits
from discdistill.distributed import DistContext, init_distributed
from discdistill.errors import DataError
from discdistill.interfaces import MaskedDiffusionTeacher
from discdistill.models import DiT
from discdistill.rundir import RunDirectory
from discdistill.runtime import (
    MetricsLog,
    NonfiniteGuard,
    StopRequest,
    TrainingInterrupted,
    check_resumable,
    seeded,
)
from discdistill.run_settings import RunSettings
from discdistill.optim import clip_grad_norm_finite_, make_adamw, warmup_linear_decay

MODEL_DIR, STATE_DIR, METRICS_FILE = "model", "checkpoint", "metrics.jsonl"
PRETRAIN_ARTEFACTS = (MODEL_DIR, STATE_DIR, METRICS_FILE)


def build_teacher(config: PretrainConfig, vocab_size: int, mask_id: int, seq_len: int) -> nn.Module:
    """A fresh network of ``config.backbone`` (DiT by default) for a domain's vocabulary and length."""
    return backbone_named(config.backbone).for_domain(config, vocab_size, mask_id, seq_len)


class ElboObjective(nn.Module):
    """The MDLM ELBO of a batch as a module's ``forward``, given its noise (t [B], uniforms u [B, L]).

    DDP and FSDP act on ``forward`` calls, not on `DiT.logits_at`, so the loss runs inside one;
    taking the noise as input lets every world size draw the same noise for the same global batch.
    """

    def __init__(self, model: MaskedDiffusionTeacher, schedule: LogLinearSchedule, time_conditioned: bool,
                 autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model, self.schedule, self.time_conditioned = model, schedule, time_conditioned
        self.autocast_dtype = autocast_dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        mask_id = self.model.mask_id
        z = torch.where(u < self.schedule.alpha(t).reshape(-1, 1), x, torch.full_like(x, mask_id))
        sigma = self.schedule.sigma(t) if self.time_conditioned else torch.zeros_like(t)
        masked = z == mask_id
        if self.autocast_dtype is None:
            logits = self.model.logits_at(z, sigma, masked)
        else:
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                logits = self.model.logits_at(z, sigma, masked)
        return mdlm_loss_at_masked(logits.float(), x, masked, t, self.schedule, mask_id)  # the loss in float32


def draw_noise(rows: int, seq_len: int, t_min: float, device: torch.device,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(antithetic t [rows], corruption uniforms u [rows, seq_len]) for one batch, in that order."""
    t = antithetic_times(rows, device, generator, t_min=t_min)
    return t, torch.rand((rows, seq_len), device=device, generator=generator)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The noise of global step ``step``: a pure function of (seed, step), so resume and any world
    size see the same draws without saving generator state."""
    return torch.Generator(device=device).manual_seed((seed * 0x9E3779B1 + step) % 2**63)


def fixed_noise_nll(objective: nn.Module, data: torch.Tensor, *, batch_size: int, max_batches: int | None,
                    t_min: float, seed: int, device: torch.device) -> float:
    """Mean `ElboObjective` value over the first ``max_batches`` batches of ``data``, noise seeded by ``seed``
    (the same corruption every call: comparable across evaluations and checkpoints)."""
    generator = torch.Generator(device=device).manual_seed(seed + 12345)
    total = 0.0
    batches = [data[i:i + batch_size] for i in range(0, len(data), batch_size)][:max_batches]
    for batch in batches:
        x = batch.to(device).long()
        t, u = draw_noise(x.shape[0], x.shape[1], t_min, device, generator)
        total += objective(x, t, u).item() * len(batch)
    return total / sum(len(b) for b in batches)


@torch.no_grad()
def validation_nll(objective: nn.Module, data: torch.Tensor, config: PretrainConfig, device: torch.device) -> float:
    """ELBO NLL per token (nats) on fixed validation batches with fixed noise: comparable across evals.

    ``objective`` is the (possibly DDP/FSDP-wrapped) `ElboObjective`; every rank runs the same batches
    (FSDP needs all ranks in each forward) and gets the same number.
    """
    was_training = objective.training
    objective.eval()
    nll = fixed_noise_nll(objective, data, batch_size=config.batch_size, max_batches=config.eval_batches,
                          t_min=config.t_min, seed=config.seed, device=device)
    objective.train(was_training)
    return nll


#: Config fields that may differ between a run and its resume: they do not change the numbers
#: (grad_accum and parallel change only how the same global batch is computed, up to float rounding).
_RESUMABLE_CHANGES = frozenset({"log_every", "save_every", "eval_every", "device", "grad_accum", "parallel",
                                "keep_checkpoints", "max_nonfinite"})


def parallel_mode(config: PretrainConfig, ctx: DistContext) -> str:
    """'single' outside torchrun, else config.parallel with 'auto' resolved by model size."""
    if not ctx.distributed:
        return "single"
    if config.parallel == "auto":
        return "fsdp" if config.model_preset in FSDP_PRESETS else "ddp"
    return config.parallel


def wrap_objective(objective: ElboObjective, mode: str, ctx: DistContext) -> nn.Module:
    """DDP (replicas, gradients all-reduced) or FSDP (each block and the rest sharded over ranks)."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        if isinstance(objective.model, DiT):  # shard each block, then the rest; other backbones as one unit
            for block in objective.model.blocks:
                fully_shard(block)
        fully_shard(objective)
    return objective


def accumulate_gradients(objective: nn.Module, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor,
                         ctx: DistContext, accum: int) -> float:
    """Forward/backward this rank's ``accum`` micro-batches of the global batch; return its mean loss.

    Each micro-loss is divided by ``accum`` and DDP/FSDP average over ranks, so the gradient is the
    mean over all W x A micro-batches: the whole-batch gradient. DDP syncs on the last micro-step only.
    """
    total = torch.zeros((), device=x.device)
    for part in range(accum):
        rows = ctx.shard(len(x), accum, part)
        skip_sync = part < accum - 1 and hasattr(objective, "no_sync")
        with objective.no_sync() if skip_sync else contextlib.nullcontext():
            loss = objective(x[rows], t[rows], u[rows]) / accum
            loss.backward()
        total += loss.detach()
    return float(ctx.mean(total))


def full_state_dicts(objective: nn.Module, optimizer: torch.optim.Optimizer, mode: str
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's and optimiser's complete state dicts (DiT names, parameter indices), on every rank.

    Under FSDP the shards are gathered (a collective: every rank must call this).
    """
    if mode != "fsdp":
        return objective_model(objective).state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(objective, optimizer, options=StateDictOptions(full_state_dict=True))
    names = [name for name, _ in objective.named_parameters()]
    strip = len("model.")
    return {k[strip:]: v for k, v in model_sd.items()}, _optimizer_by_index(optim_sd, names)


def _optimizer_by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An FQN-keyed optimiser state dict (torch.distributed.checkpoint) -> torch's index-keyed layout."""
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[p] for p in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def _optimizer_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    groups = [{**g, "params": [names[p] for p in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[int(k)]: v for k, v in state["state"].items()}, "param_groups": groups}


def objective_model(objective: nn.Module) -> MaskedDiffusionTeacher:
    """The network inside a (possibly DDP-wrapped) `ElboObjective`."""
    return getattr(objective, "module", objective).model


class _StateView:
    """Presents a gathered full state dict to `save_training_state`, which only calls ``state_dict()``."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


@dataclass
class _TrainingState:
    """What a pre-training run updates: the (possibly wrapped) objective, optimiser, schedule, skip guard."""

    model: MaskedDiffusionTeacher  # the unwrapped teacher (its parameters are the ones clipped and stepped)
    objective: nn.Module  # ElboObjective, or its DDP/FSDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    guard: NonfiniteGuard
    mode: str  # "single", "ddp" or "fsdp"
    start: int  # first step to run (0, or the resumed step)

    def optimizer_step(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor, ctx: DistContext,
                       config: PretrainConfig) -> tuple[float, Any]:
        """One optimiser step on the global batch; a non-finite loss skips the update, not the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = accumulate_gradients(self.objective, x, t, u, ctx, config.grad_accum)
        grads = clip_grad_norm_finite_(self.model.parameters(), config.grad_clip)
        if math.isfinite(loss_value):  # the mean over ranks: all ranks agree
            self.optimizer.step()
        self.scheduler.step()  # the schedule follows the step index, skipped or not
        return loss_value, grads

    def checkpoint(self, step: int, out_dir: Path, config: PretrainConfig, ctx: DistContext) -> None:
        model_sd, optim_sd = full_state_dicts(self.objective, self.optimizer, self.mode)  # a collective under FSDP
        ctx.on_main(lambda: save_training_state(
            out_dir / STATE_DIR, modules={"model": _StateView(model_sd)}, optimizers={"model": _StateView(optim_sd)},
            schedulers={"model": self.scheduler}, meta={"step": step, "config": config.model_dump(), **self.guard.state()},
            keep=config.keep_checkpoints))


def _start_training(config: PretrainConfig, model: MaskedDiffusionTeacher, out_dir: Path, resume: bool, ctx: DistContext) -> _TrainingState:
    """Optimiser, schedule and guard for ``model`` (loaded from OUT/checkpoint on resume), wrapped for ``ctx``."""
    mode = parallel_mode(config, ctx)
    autocast_dtype = torch.bfloat16 if config.precision == "bfloat16" else None
    objective = ElboObjective(model, LogLinearSchedule(config.schedule.eps), config.time_conditioned, autocast_dtype)
    optimizer = make_adamw(model.parameters(), config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_linear_decay(optimizer, config.warmup_steps, config.steps)
    guard, start = NonfiniteGuard(config.max_nonfinite), 0
    if resume:
        meta, _ = load_latest_training_state(out_dir / STATE_DIR, modules={"model": model},
                                             optimizers={"model": optimizer}, schedulers={"model": scheduler})
        check_resumable(meta["config"], config.model_dump(), _RESUMABLE_CHANGES, out_dir)
        start = meta["step"]
        guard = NonfiniteGuard(config.max_nonfinite, meta.get("nonfinite_skipped", 0), meta.get("nonfinite_streak", 0))
    unsharded_state = optimizer.state_dict() if mode == "fsdp" else None  # taken before sharding
    wrapped = wrap_objective(objective, mode, ctx)
    if unsharded_state is not None:  # sharding replaced the parameters: rebuild the optimiser over the shards
        optimizer, scheduler = _fsdp_optimizer(wrapped, unsharded_state, scheduler, config, resume)
    return _TrainingState(model, wrapped, optimizer, scheduler, guard, mode, start)


def _check_blocks(train: torch.Tensor, validation: torch.Tensor) -> None:
    if train.dim() != 2 or len(train) == 0:
        raise DataError("the training set is empty: no full block of tokens could be built from the input")
    if len(validation) == 0:
        raise DataError("the validation set is empty: provide more data or a shorter --seq-len")


def pretrain(
    config: PretrainConfig,
    train: torch.Tensor,
    validation: torch.Tensor,
    out_dir: str | Path,
    *,
    vocab_size: int,
    mask_id: int,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    run_settings: RunSettings | None = None,
    ctx: DistContext | None = None,
) -> Path:
    """Train a teacher (``config.backbone``, DiT by default) on ``train`` blocks [N, L]; return the saved model directory (OUT/model).

    Under torchrun (or with an explicit ``ctx``) the global batch ``config.batch_size`` is sharded
    over ranks (discdistill.distributed); rank 0 logs and writes. Results do not depend on the world
    size or on ``grad_accum`` beyond float rounding (with dropout 0; dropout masks differ per shard).
    An existing run in ``out_dir`` is continued with ``resume``, replaced with ``overwrite`` (once the
    new run's first checkpoint is written), and otherwise refused (discdistill.rundir).
    """
    out_dir = Path(out_dir)
    _check_blocks(train, validation)
    ctx = ctx or init_distributed(config.device)
    ctx.shard(config.batch_size, config.grad_accum)  # refuse an uneven split before any work
    with RunDirectory(out_dir, PRETRAIN_ARTEFACTS, resume=resume, overwrite=overwrite, writer=ctx.is_main) as claim:
        run_settings = run_settings or RunSettings(time_conditioned=config.time_conditioned, schedule=config.schedule)
        return _pretrain_in(claim, config, train, validation, vocab_size=vocab_size, mask_id=mask_id, resume=resume,
                            progress=progress, extra=extra, run_settings=run_settings, ctx=ctx)


def _pretrain_in(claim: RunDirectory, config: PretrainConfig, train: torch.Tensor, validation: torch.Tensor, *,
                 vocab_size: int, mask_id: int, resume: bool, progress: bool, extra: dict[str, Any] | None,
                 run_settings: RunSettings, ctx: DistContext) -> Path:
    """`pretrain`'s loop, inside the claimed run directory."""
    out_dir = claim.path
    device, seq_len = ctx.device, train.shape[1]
    with seeded(config.seed, device):  # the initial weights
        teacher = build_teacher(config, vocab_size, mask_id, seq_len).to(device)
    run = _start_training(config, teacher, out_dir, resume, ctx)
    batches = EpochBatches(len(train), config.batch_size, config.seed)
    log = MetricsLog(out_dir / METRICS_FILE, start_step=run.start) if ctx.is_main else None
    run.objective.train()
    bar = tqdm(range(run.start, config.steps), initial=run.start, total=config.steps, desc="pretrain",
               disable=not (progress and ctx.is_main))
    stop = StopRequest()

    def save(step: int) -> None:
        run.checkpoint(step, out_dir, config, ctx)
        claim.checkpoint_saved()

    try:
        with stop:
            for step in bar:
                tic = time.perf_counter()
                x = train[batches.indices(step)].to(device).long()  # memory-mapped corpora may be uint16
                t, u = draw_noise(len(x), seq_len, config.t_min, device, step_generator(config.seed, step, device))
                with seeded((config.seed * 0x9E3779B1 + step) % 2**63 + ctx.rank, device):  # dropout: f(step)
                    loss_value, grads = run.optimizer_step(x, t, u, ctx, config)
                done = step + 1
                run.guard.update(math.isfinite(loss_value), done, out_dir / STATE_DIR)
                if done % config.log_every == 0 or done == config.steps:
                    record = {"step": done, "loss": loss_value, "grad_norm": grads.norm,
                              "nonfinite_grad": grads.nonfinite, "nonfinite_skipped": run.guard.skipped,
                              "lr": run.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - tic}
                    if done % config.eval_every == 0 or done == config.steps:
                        record["val_nll"] = validation_nll(run.objective, validation, config, device)
                        record["val_ppl_bound"] = math.exp(record["val_nll"])
                        record["val_bits_per_token"] = nats_to_bits(record["val_nll"])
                        if ctx.is_main:
                            bar.write(f"step {done}: train loss {loss_value:.4f}, validation NLL {record['val_nll']:.4f} "
                                      f"nats/token = {record['val_bits_per_token']:.3f} bits/token "
                                      f"(PPL <= {record['val_ppl_bound']:.1f})")
                    if log is not None:
                        log.write(record)
                    bar.set_postfix(loss=f"{loss_value:.3f}")
                if ctx.any(stop.requested):
                    save(done)
                    raise TrainingInterrupted(f"interrupted at step {done}: checkpoint saved in "
                                              f"{out_dir / STATE_DIR}; continue with --resume")
                if done % config.save_every == 0 and done < config.steps:
                    save(done)
    finally:
        if log is not None:
            log.close()
        bar.close()
    save(config.steps)
    return _save_teacher(run, config, validation, out_dir, vocab_size, mask_id, seq_len, extra, run_settings, ctx)


def _save_teacher(run: _TrainingState, config: PretrainConfig, validation: torch.Tensor, out_dir: Path,
                  vocab_size: int, mask_id: int, seq_len: int, extra: dict[str, Any] | None, run_settings: RunSettings,
                  ctx: DistContext) -> Path:
    """Write OUT/model (full weights, gathered under FSDP) with the run's config and final validation NLL."""
    info = {"steps": config.steps, "config": config.model_dump(), "time_conditioned": config.time_conditioned,
            "val_nll": validation_nll(run.objective, validation, config, ctx.device)}
    model_sd, _ = full_state_dicts(run.objective, run.optimizer, run.mode)
    if ctx.is_main:
        with seeded(config.seed, torch.device("cpu")):  # its init is overwritten: keep the caller's RNG as it was
            final = build_teacher(config, vocab_size, mask_id, seq_len)
        final.load_state_dict(model_sd)
        save_pretrained(final, out_dir / MODEL_DIR, extra={**info, **(extra or {})}, run=run_settings)
    ctx.barrier()
    return out_dir / MODEL_DIR


def _fsdp_optimizer(objective: nn.Module, state: dict[str, Any], scheduler: Any, config: PretrainConfig,
                    resume: bool) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over FSDP's sharded parameters; on resume, the loaded (full) state is scattered into it."""
    optimizer = make_adamw(objective.parameters(), config.lr, weight_decay=config.weight_decay)
    new_scheduler = warmup_linear_decay(optimizer, config.warmup_steps, config.steps)  # sets initial_lr first
    if resume:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = [name for name, _ in objective.named_parameters()]
        set_optimizer_state_dict(objective, optimizer, _optimizer_by_name(state, names),
                                 options=StateDictOptions(full_state_dict=True))
    new_scheduler.load_state_dict(scheduler.state_dict())
    return optimizer, new_scheduler
