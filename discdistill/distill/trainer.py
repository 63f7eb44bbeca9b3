"""The DiDi-Instruct training loop (method.md §2), with exact resume.

One iteration, for ``batch_rows`` data rows and G student samples per row (N = rows * G):

    1. rollout:        x_fake, lp1 + lp2 = student 1 -> tau -> 0 from all-mask          (rollout.py)
                       (rollout_steps = K: the student's K-step sampler, sum of K log-probs)
    2. corruption:     z_real, z_fake ~ q(. | x) at t = tau (coupled) or an independent t
    3. discriminator:  disc_steps AdamW steps on the smoothed per-token BCE (1: method)   (losses.py)
    4. rewards:        r_i = mean_{masked} clamp(logit, -8, 8) after the step, no grad, float32   (rewards.py)
                       (options: K corruptions, M quadrature times, sum instead of mean)
    5. advantages:     A = group-normalised r (groups of G, clip 3)
                       (credit = 'local': A_ij per token from the per-position rewards in a window)
    6. student loss:   -mean(omega(t) A (lp1 + lp2)) + kl_w sum_states KL - ent_w H; one AdamW step
    7. EMA update of the student (the EMA is what sampling uses)

What a run writes (OUT/student, OUT/discriminator, OUT/state, OUT/metrics.jsonl) and how --resume
reads it back: persistence.py.

Determinism: data order is a pure function of (seed, iteration) (`discdistill.data.EpochBatches`);
every rollout / corruption draw comes from one generator whose state is checkpointed; so a resumed
CPU run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from discdistill.backbones import build_discriminator
from discdistill.checkpoint import load_pretrained, read_pretrained_config
from discdistill.data import EpochBatches
from discdistill.diffusion import LogLinearSchedule, corrupt
from discdistill.distill.config import DistillConfig
from discdistill.distill.losses import (
    advantages,
    beta_density,
    kl_terms,
    local_advantages,
    local_policy_loss,
    masked_entropy,
    omega,
    student_policy_loss,
    window_sum,
)
from discdistill.distill.objectives import make_objective
from discdistill.distill.persistence import DISTILL_ARTEFACTS, METRICS_FILE, STATE_DIR, restore_run, save_run
from discdistill.distill.rewards import discriminator_reward_map, discriminator_rewards
from discdistill.distill.rollout import (
    Rollout,
    grid_rollout,
    masked_log_probs,
    sample_tau,
    student_rollout,
)
from discdistill.distill.student import EMAStudent
from discdistill.distributed import init_distributed, world_from_env
from discdistill.errors import DataError, ModelMismatchError
from discdistill.optim import (
    clip_grad_norm_finite_,
    make_adamw,
    warmup_linear_decay,
)
from discdistill.run_settings import RunSettings, run_settings_of
from discdistill.rundir import RunDirectory
from discdistill.runtime import (
    MetricsLog,
    NonfiniteGuard,
    StopRequest,
    TrainingInterrupted,
    seeded,
)
from discdistill.sampling import sample


def _stored_values(data: torch.Tensor) -> torch.Tensor:
    """The ids a block tensor can hold: its storage when that is smaller than the tensor (overlapping
    random-crop windows share one stream), else the tensor; checked instead of materialising the windows."""
    stored = torch.empty(0, dtype=data.dtype).set_(data.untyped_storage())
    return stored if stored.numel() < data.numel() else data


class DistillTrainer:
    """Holds the student (+ EMA), the frozen teacher, the discriminator, their optimisers, and the loop."""

    def __init__(self, config: DistillConfig, teacher: nn.Module, train_data: torch.Tensor | None,
                 out_dir: str | Path, *, teacher_path: str | None = None, progress: bool = True,
                 teacher_run: RunSettings | None = None,
                 reward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """``reward_fn`` (diagnostics only): x_fake [N, L] -> rewards [N] used *instead of* the
        discriminator's (which still trains). With a domain's exact log-likelihood it gives the
        policy-gradient machinery an oracle reward, separating "the student update works" from "the
        density-ratio estimate is informative" (benchmarks/distill_synthetic.py). ``teacher_run``: the
        teacher's saved `RunSettings` (time conditioning; domain and tokenizer, passed on to the student)."""
        if reward_fn is not None and config.credit == "local":
            raise ValueError("reward_fn gives one reward per sample; credit='local' needs the discriminator's "
                             "per-position rewards (use credit='sequence' with it)")
        self.config = config
        self.reward_fn = reward_fn
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.teacher_path = teacher_path
        self.ctx = init_distributed(config.device)  # under torchrun: this rank's device, rows and noise
        self.ctx.shard(config.batch_rows)  # whole rows (and so whole groups) per rank, or a clear error
        self.device = self.ctx.device
        self.guard = NonfiniteGuard(config.max_nonfinite)
        self.autocast_bf16 = config.bf16 if config.bf16 is not None else self.device.type == "cuda"
        self.schedule = LogLinearSchedule(config.schedule.eps)
        teacher_run = teacher_run or RunSettings()
        self.time_conditioned = (teacher_run.time_conditioned if config.time_conditioned is None
                                 else config.time_conditioned)
        #: What the student's checkpoint records: sampling must use this sigma rule and eps.
        self.run_settings = teacher_run.model_copy(update={"time_conditioned": self.time_conditioned,
                                                           "schedule": config.schedule})
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.mask_id = int(teacher.mask_id)
        self.seq_len, self.train_data = self._check_data(train_data)
        self.student = EMAStudent(copy.deepcopy(self.teacher))  # DiDi-Instruct starts the student at the teacher
        with seeded(config.seed, self.device):  # the head's weights and spectral-norm vectors
            self.disc = build_discriminator(self.teacher, config.disc_blocks).to(self.device).train()
        self.objective = make_objective(config.disc_objective, config.reward_reduce)

        self.opt_student = make_adamw(self.student.network.parameters(), config.student_lr, config.betas, config.weight_decay)
        self.opt_disc = make_adamw(self.disc.parameters(), config.disc_lr, config.betas, config.weight_decay)
        self.sched_student = warmup_linear_decay(self.opt_student, config.warmup_steps, config.iterations)
        disc_warmup = config.warmup_steps if config.disc_warmup_steps is None else config.disc_warmup_steps
        self.sched_disc = warmup_linear_decay(self.opt_disc, disc_warmup, config.iterations)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1_000_003 * self.ctx.rank)
        self.batches = (EpochBatches(len(self.train_data), config.batch_rows, config.seed)
                        if self.train_data is not None else None)
        self.iteration = 0
        self.on_checkpoint: Callable[[], None] = lambda: None  # called after each complete save

    # ------------------------------------------------------------------ set-up helpers
    def _check_data(self, data: torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
        if data is None:
            if self.config.positives == "data":
                raise DataError("distillation with positives='data' needs training data")
            return int(self.teacher.seq_len), None
        if data.dim() != 2 or len(data) == 0:
            raise DataError("the training set is empty: no full block of tokens could be built from the input")
        if data.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise DataError(f"training data must hold integer ids, got {data.dtype}")
        if data.shape[1] > self.teacher.seq_len:
            raise ModelMismatchError(f"data blocks have {data.shape[1]} tokens but the teacher accepts at most "
                                     f"{self.teacher.seq_len}; use a shorter --seq-len")
        values = _stored_values(data)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= self.teacher.vocab_size:
            raise ModelMismatchError(f"data ids span [{low}, {high}] but the teacher's vocabulary has "
                                     f"{self.teacher.vocab_size} ids; was it trained on this domain?")
        if bool((values == self.mask_id).any()):
            raise DataError(f"the training data contains the mask id {self.mask_id}")
        return int(data.shape[1]), data  # batches are cast to int64 when drawn (a crop view stays small)

    # The pieces an iteration is made of, public for subclasses and benchmarks/distill_floor.py.
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the trainer's device when the run asked for it, else a no-op context."""
        if self.autocast_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Denoiser sigma: sigma_t for time-conditioned models, else 0 (MDLM)."""
        return self.schedule.sigma(t.double()).float() if self.time_conditioned else torch.zeros_like(t).float()

    def _tau(self, n: int) -> torch.Tensor:
        """n times from the tau distribution; with ``tau_per_group`` one per group, repeated G times."""
        c = self.config
        if c.tau_per_group or c.group_common_noise:
            draws = sample_tau(n // c.group_size, c.tau_alpha, c.tau_beta, c.tau_min, c.tau_max, self.generator,
                               self.device)
            return draws.repeat_interleave(c.group_size)
        return sample_tau(n, c.tau_alpha, c.tau_beta, c.tau_min, c.tau_max, self.generator, self.device)

    # ------------------------------------------------------------------ one iteration
    def real_rows(self) -> torch.Tensor:
        """This iteration's positives: data rows (this rank's shard), or fresh teacher samples."""
        c = self.config
        if c.positives == "teacher":
            return sample(self.teacher, num_samples=c.batch_rows // self.ctx.world_size, seq_len=self.seq_len, steps=c.teacher_sample_steps,
                          mask_id=self.mask_id, schedule=self.schedule, precision=c.precision,
                          time_conditioned=self.time_conditioned, generator=self.generator, device=self.device).ids
        assert self.batches is not None and self.train_data is not None
        rows = self.batches.indices(self.iteration)[self.ctx.shard(c.batch_rows)]
        return self.train_data[rows].to(self.device).long()

    def step(self) -> dict[str, Any]:
        """Run one iteration (rollout, discriminator step, student step, EMA); return its metrics.

        Dropout (the only draw from torch's global generator) is seeded by (seed, iteration, rank), so a
        resumed run redoes it exactly and the caller's generator is left as it was."""
        seed = (self.config.seed * 0x9E3779B1 + self.iteration) % 2**63 + self.ctx.rank
        with seeded(seed, self.device):
            return self._step()

    def _step(self) -> dict[str, Any]:
        c = self.config
        tic = time.perf_counter()
        n = c.samples_per_iteration // self.ctx.world_size  # this rank's samples: whole groups
        x_real = self.real_rows().repeat_interleave(c.group_size, 0)  # groups stay contiguous
        tau = self._tau(n)

        # 1. rollout (with gradients into the student)
        self.student.train()
        with self.autocast():
            if c.rollout_steps is None:
                rollout = student_rollout(self.student, tau, seq_len=self.seq_len, mask_id=self.mask_id,
                                          schedule=self.schedule, two_step=c.two_step,
                                          time_conditioned=self.time_conditioned, precision=c.precision,
                                          generator=self.generator, shared_rows=self._shared_rows)
            else:
                rollout = grid_rollout(self.student, tau, steps=c.rollout_steps, seq_len=self.seq_len,
                                       mask_id=self.mask_id, schedule=self.schedule,
                                       time_conditioned=self.time_conditioned, precision=c.precision,
                                       generator=self.generator, shared_rows=self._shared_rows)
        x_fake = rollout.x_fake

        # 2. corruption at t (coupled: the rollout's tau)
        t = tau if c.coupled_tau else self._tau(n)
        alpha = self.schedule.alpha(t.double())
        z_real = corrupt(x_real, alpha, self.mask_id, self.generator)
        z_fake = corrupt(x_fake, alpha, self.mask_id, self.generator, self._shared_rows)
        sigma_t = self.schedule.sigma(t.double()).float()  # the discriminator gets the real sigma

        # 3. discriminator step(s)
        loss_disc, acc_real, acc_fake, grads_disc = self._disc_step(z_real, z_fake, sigma_t)
        for _ in range(c.disc_steps - 1):  # fresh masks at the same t
            loss_disc, acc_real, acc_fake, grads_disc = self._disc_step(
                corrupt(x_real, alpha, self.mask_id, self.generator),
                corrupt(x_fake, alpha, self.mask_id, self.generator), sigma_t)
        self.sched_disc.step()  # once per iteration: the schedule counts iterations, not steps

        # 4-5. rewards after the step(s) (no grad, float32), advantages (per sample, or per token: 'local')
        weights = omega(t, c.omega, c.omega_clamp, self.schedule)
        if c.reward_times > 1:  # the quadrature already weighted its times by omega (_rewards)
            weights = torch.ones_like(weights)
        elif c.importance_weight:  # config refuses it with the quadrature
            weights = weights / beta_density(t.double(), c.tau_alpha, c.tau_beta).float()
        if c.credit == "local":
            reward_map = self._reward_map(x_fake, z_fake, t)
            rewards = reward_map.sum(-1)  # logged: the sequence's total
            adv = local_advantages(window_sum(reward_map, c.credit_window), c.advantage_norm, c.group_size,
                                   c.advantage_clip)
            loss_pg = local_policy_loss(weights, adv, rollout.position_log_prob())
        else:
            if self.reward_fn is not None:
                rewards = self.reward_fn(x_fake).to(device=self.device, dtype=torch.float32)
            else:
                rewards = self._rewards(x_fake, z_fake, t)
            adv = advantages(rewards, c.advantage_norm, c.group_size, c.advantage_clip)
            loss_pg = student_policy_loss(weights, adv, rollout.log_prob)

        # 6. student loss and step
        loss_kl, kl_fwd, kl_rev, entropy = self._regularisers(rollout)
        loss = loss_pg + c.kl_weight * loss_kl - c.entropy_weight * entropy
        self.opt_student.zero_grad(set_to_none=True)
        loss.backward()
        self.ctx.average_gradients(self.student.network.parameters())
        grads_student = clip_grad_norm_finite_(self.student.network.parameters(), c.student_grad_clip)
        if self._finite(loss):  # a non-finite loss is skipped (counted by the run loop)
            self.opt_student.step()
        self.sched_student.step()

        # 7. EMA
        self.student.update_ema(c.ema_decay)
        self.iteration += 1
        return {
            "step": self.iteration,
            "loss_student": float(loss.detach()), "loss_pg": float(loss_pg.detach()),
            "loss_disc": float(loss_disc.detach()),
            "acc_real": float(acc_real), "acc_fake": float(acc_fake),
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()) if n > 1 else 0.0,
            "adv_mean": float(adv.mean()), "adv_std": float(adv.std()) if n > 1 else 0.0,
            "adv_min": float(adv.min()), "adv_max": float(adv.max()),
            "kl": float(loss_kl.detach()), "kl_forward": float(kl_fwd), "kl_reverse": float(kl_rev),
            "entropy": float(entropy.detach()), "log_prob_mean": float(rollout.log_prob.detach().mean()),
            "omega_mean": float(weights.mean()),
            "grad_norm_student": grads_student.norm, "grad_norm_disc": grads_disc.norm,
            "nonfinite_grad_student": grads_student.nonfinite, "nonfinite_grad_disc": grads_disc.nonfinite,
            "lr_student": self.sched_student.get_last_lr()[0], "lr_disc": self.sched_disc.get_last_lr()[0],
            "seconds": time.perf_counter() - tic,
        }

    def _disc_step(self, z_real: torch.Tensor, z_fake: torch.Tensor, sigma_t: torch.Tensor) -> tuple[Any, ...]:
        """One AdamW step on the per-token BCE of real vs fake corrupted states; (loss, acc_r, acc_f, grads)."""
        c, n = self.config, z_real.shape[0]
        self.disc.train()
        with self.autocast():
            logits = self.disc(torch.cat([z_real, z_fake]), torch.cat([sigma_t, sigma_t]))
        logits_real, logits_fake = logits[:n], logits[n:]
        mask_real, mask_fake = z_real == self.mask_id, z_fake == self.mask_id
        loss = self.objective.loss(logits_real, logits_fake, mask_real, mask_fake, c.label_smoothing)
        acc_real, acc_fake = self.objective.accuracy(logits_real.detach(), logits_fake.detach(), mask_real, mask_fake)
        self.opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        self.ctx.average_gradients(self.disc.parameters())
        grads = clip_grad_norm_finite_(self.disc.parameters(), c.disc_grad_clip)
        if self._finite(loss):
            self.opt_disc.step()
        return loss.detach(), acc_real, acc_fake, grads

    def _rewards(self, x_fake: torch.Tensor, z_fake: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Step 4: r [N] by `rewards.discriminator_rewards`; a method so that diagnostics can wrap it
        (benchmarks/distill_synthetic.py's ProbedTrainer)."""
        return discriminator_rewards(self.disc, self.objective, x_fake, z_fake, t, config=self.config,
                                     schedule=self.schedule, mask_id=self.mask_id, device=self.device,
                                     corrupt_at=self._corrupt_at)

    def _reward_map(self, x_fake: torch.Tensor, z_fake: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Step 4 for ``credit = 'local'``: r [N, L] by `rewards.discriminator_reward_map`."""
        return discriminator_reward_map(self.disc, self.objective, x_fake, z_fake, t, config=self.config,
                                        schedule=self.schedule, mask_id=self.mask_id, device=self.device,
                                        corrupt_at=self._corrupt_at)

    def _corrupt_at(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z ~ q(. | x) at times t [N] (from the run's generator)."""
        return corrupt(x, self.schedule.alpha(t.double()), self.mask_id, self.generator, self._shared_rows)

    @property
    def _shared_rows(self) -> int:
        """Rows that share their noise (a group under ``group_common_noise``, else 1)."""
        return self.config.group_size if self.config.group_common_noise else 1

    def _finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank (they must agree to step or skip together)."""
        return not self.ctx.any(not bool(torch.isfinite(loss)))

    def _regularisers(self, rollout: Rollout) -> tuple[torch.Tensor, ...]:
        """(sum over states of the KL, forward KL sum, reverse KL sum, mean entropy over states).

        The teacher runs (no grad) only when the KL term is on; the entropy is cheap and always logged.
        """
        c = self.config
        zero = torch.zeros((), device=self.device)
        kl, fwd, rev, entropies = zero, zero, zero, []
        for step in rollout.steps:
            entropies.append(masked_entropy(step.log_probs, None))  # rows = masked positions of the state
            if c.kl_weight > 0:
                with torch.no_grad(), self.autocast():
                    teacher_lp = masked_log_probs(self.teacher, step.state, self.sigma(step.t), step.masked,
                                                  self.mask_id)
                terms = kl_terms(step.log_probs, teacher_lp, None, c.kl, c.jeffrey_beta)
                kl, fwd, rev = kl + terms.value, fwd + terms.forward.detach(), rev + terms.reverse.detach()
        return kl, fwd, rev, torch.stack(entropies).mean()

    # ------------------------------------------------------------------ persistence (persistence.py)
    def save(self) -> Path:
        """Write student (EMA), discriminator and training state (rank 0); return the student directory."""
        return save_run(self)

    def load(self) -> None:
        """Restore the state saved in OUT/state (the run must have the same configuration)."""
        restore_run(self)

    # ------------------------------------------------------------------ the loop
    def run(self, until: int | None = None) -> Path:
        """Train to ``until`` (default: config.iterations), checkpointing on the way; return OUT/student."""
        c = self.config
        until = c.iterations if until is None else min(until, c.iterations)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.out_dir / METRICS_FILE, start_step=self.iteration) if self.ctx.is_main else None
        bar = tqdm(range(self.iteration, until), initial=self.iteration, total=c.iterations, desc="distill",
                   disable=not (self.progress and self.ctx.is_main))
        try:
            with StopRequest() as stop:
                for _ in bar:
                    record = self.ctx.mean_metrics(self.step())  # means over ranks: all ranks agree
                    finite = math.isfinite(record["loss_student"]) and math.isfinite(record["loss_disc"])
                    self.guard.update(finite, self.iteration, self.out_dir / STATE_DIR)
                    record["nonfinite_skipped"] = self.guard.skipped
                    if log is not None:
                        log.write(record)
                    if self.iteration % c.log_every == 0:
                        bar.set_postfix(d_loss=f"{record['loss_disc']:.3f}", acc=f"{record['acc_real']:.2f}/"
                                        f"{record['acc_fake']:.2f}", r=f"{record['reward_mean']:.2f}",
                                        H=f"{record['entropy']:.2f}")
                    if self.ctx.any(stop.requested):
                        self.save()
                        raise TrainingInterrupted(f"interrupted at iteration {self.iteration}: state saved in "
                                                  f"{self.out_dir / STATE_DIR}; continue with --resume")
                    if self.iteration % c.save_every == 0 and self.iteration < until:
                        self.save()
        finally:
            if log is not None:
                log.close()
            bar.close()
        return self.save()


def distill(config: DistillConfig, teacher_dir_or_model: str | Path | nn.Module, train_data: torch.Tensor | None,
            out_dir: str | Path, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
            teacher_run: RunSettings | None = None) -> Path:
    """Distil a teacher into a few-step student with DiDi-Instruct; return OUT/student (the EMA student).

    ``teacher_dir_or_model``: a `save_pretrained` directory or a DiT; ``train_data``: LongTensor [N, L] of
    ids (may be None when ``config.positives == "teacher"``). ``resume`` continues the run in ``out_dir``
    exactly (same data order and noise); ``overwrite`` replaces it once the new run's first state is
    written; with neither, ``out_dir`` must not already hold a run (discdistill.rundir). ``teacher_run``:
    the teacher's `RunSettings` (default: read from its directory), which the student's checkpoint inherits.
    """
    out_dir = Path(out_dir)
    if isinstance(teacher_dir_or_model, nn.Module):
        teacher, teacher_path = teacher_dir_or_model, None
    else:
        teacher, teacher_path = load_pretrained(teacher_dir_or_model), str(teacher_dir_or_model)
        teacher_run = teacher_run or run_settings_of(read_pretrained_config(teacher_dir_or_model))
    writer = world_from_env()[0] == 0
    with RunDirectory(out_dir, DISTILL_ARTEFACTS, resume=resume, overwrite=overwrite, writer=writer) as claim:
        trainer = DistillTrainer(config, teacher, train_data, out_dir, teacher_path=teacher_path, progress=progress,
                                 teacher_run=teacher_run)
        trainer.on_checkpoint = claim.checkpoint_saved
        if resume:
            trainer.load()
        return trainer.run()
