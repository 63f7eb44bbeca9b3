"""Configuration of DiDi-Instruct distillation and of the reward-guided ancestral sampler (RGAS).

Every technique of method.md §2 is a switch here, so the paper's cumulative ablation can be rerun
(`ablation_ladder`). Defaults follow method.md, except where a small model needs another value
(student learning rate and warm-up: see docs/distillation.md for the tuning on the Markov domain).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from discdistill.config import ScheduleConfig, StrictModel


class DistillConfig(StrictModel):
    """One DiDi-Instruct run: student rollout, discriminator, rewards, student loss, optimisation."""

    # ------------------------------------------------------------------ rollout (method.md §2.2)
    two_step: bool = Field(
        True, description="Intermediate-state decomposition: roll out 1 -> tau -> 0 (two ancestral steps, "
        "log p = lp1 + lp2). Off: one step 1 -> 0 that fills every position from the all-mask state.")
    rollout_steps: int | None = Field(
        None, ge=1, description="K: roll out the student's own K-step sampler instead (K ancestral steps on the "
        "sampling grid, log p = sum of the K steps' log-probs; tau is then only the discriminator's corruption "
        "time), so the policy gradient optimises the sampler the student is used with. None: two_step decides. "
        "Costs K student forward/backward passes an iteration (two_step: 2).")
    time_conditioned: bool | None = Field(
        None, description="Pass sigma_t to student and teacher. None: as the teacher was trained (its saved run "
        "settings; MDLM-style teachers are time-unconditioned: sigma = 0).")
    precision: Literal["float64", "float32"] = Field(
        "float64", description="Categorical sampling precision in the rollout (float32 truncates the tail).")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Log-linear schedule (eps).")

    # ------------------------------------------------------------------ tau (method.md §2.2, §2.5)
    tau_alpha: float = Field(1.0, gt=0.0, description="tau ~ Beta(tau_alpha, tau_beta).")
    tau_beta: float = Field(1.0, gt=0.0, description="tau ~ Beta(tau_alpha, tau_beta).")
    tau_min: float = Field(0.02, gt=0.0, lt=1.0, description="tau is clamped to [tau_min, tau_max].")
    tau_max: float = Field(0.98, gt=0.0, lt=1.0, description="tau is clamped to [tau_min, tau_max].")
    tau_per_group: bool = Field(
        False, description="Draw one tau per group of G samples (off: one per sample, method.md). Sharing it "
        "makes the within-group reward differences reflect the samples rather than their noise levels.")
    group_common_noise: bool = Field(
        False, description="The G samples of a group share their tau, the rollout's unmasking pattern and the "
        "reward's corruption masks (common random numbers; implies tau_per_group): within-group reward "
        "differences then come from the tokens the student chose, not from which positions it unmasked "
        "together or which the corruption hid. Pair with advantage_norm='group'.")
    coupled_tau: bool = Field(
        True, description="The discriminator corrupts real and fake at the student sample's own tau; "
        "off: at an independent draw from the same distribution (one per sample).")
    omega: Literal["simplified", "constant"] = Field(
        "simplified", description="Time weight omega(t): 'simplified' = -alpha'_t/(1 - alpha_t) (about 1/t), "
        "clamped to omega_clamp; 'constant' = 1.")
    omega_clamp: tuple[float, float] = Field((0.1, 10.0), description="[low, high] clamp of the simplified omega.")
    importance_weight: bool = Field(
        False, description="Divide omega by the density of the tau distribution (Beta pdf) at t "
        "(reward_times = 1 only: a quadrature over t has no sampling density to correct).")

    # ------------------------------------------------------------------ discriminator (method.md §2.3)
    positives: Literal["data", "teacher"] = Field(
        "data", description="Real side of the discriminator: training data (reference code) or teacher samples.")
    teacher_sample_steps: int = Field(
        256, gt=0, description="Ancestral steps of the teacher samples used when positives = 'teacher'.")
    disc_blocks: int = Field(4, ge=0, description="Trainable last blocks of the discriminator (min(K, n_blocks)).")
    disc_objective: Literal["token", "sequence"] = Field(
        "token", description="'token' (method.md): per-token BCE over masked positions, reward = mean of the "
        "clamped log-odds over them. 'sequence': one BCE example per row whose logit is the sum of the "
        "per-position logits over every position, reward = that sum (clamped to reward_clamp * L); each "
        "position learns an additive share of the log-ratio (distill/objectives.py).")
    label_smoothing: float = Field(0.1, ge=0.0, lt=0.5, description="BCE targets 1 - s (real) and s (fake).")
    reward_clamp: float = Field(8.0, gt=0.0, description="Per-token log-odds reward clamped to [-c, c].")
    reward_corruptions: int = Field(
        1, gt=0, description="K: a sample's reward is averaged over K independent corruptions of x_fake at its "
        "t (one batched no-grad discriminator pass; the first is the one the discriminator trained on). "
        "1 = method.md. The corruption draw dominates the reward's variance on small models.")
    reward_reduce: Literal["mean", "sum"] = Field(
        "mean", description="How a sample's clamped per-token logits over its masked positions become one "
        "reward: 'mean' (method.md) or 'sum' (a sequence-level log-ratio: more masked evidence counts more).")
    reward_times: int = Field(
        1, gt=0, description="M: 1 = the reward is read at the sample's own t (method.md); M > 1 = averaged over "
        "the M midpoints of [tau_min, tau_max] split into equal parts, the same for every sample (a quadrature "
        "of the integral over t, weighted by omega(t_m), which then no longer weights the samples; high-noise "
        "states keep the log-ratio out of saturation). Each t gets reward_corruptions corruptions.")
    reward_time_range: tuple[float, float] | None = Field(
        None, description="[low, high] split by the reward_times quadrature (None: [tau_min, tau_max]). High "
        "noise levels show few tokens, so the discriminator's log-odds stay in the range where they rank.")
    disc_steps: int = Field(
        1, gt=0, description="Discriminator AdamW steps per iteration (method.md: 1). Every step after the "
        "first re-corrupts the same real rows and student samples at the same t with fresh masks.")
    disc_lr: float = Field(1e-5, gt=0.0, description="Discriminator AdamW learning rate.")
    disc_grad_clip: float = Field(1.0, gt=0.0, description="Discriminator grad-norm clip.")

    # ------------------------------------------------------------------ rewards (method.md §2.4)
    group_size: int = Field(4, gt=0, description="G: student samples per data row (a group).")
    advantage_norm: Literal["group", "batch", "none"] = Field(
        "group", description="'group': A = clamp((r - mean_g) / (std_g + 1e-8), -clip, clip) within each group "
        "of G; 'batch': the same over the whole batch; 'none': A = r (plain score-function estimator).")
    advantage_clip: float = Field(3.0, gt=0.0, description="Advantage clip (group / batch normalisation).")
    credit: Literal["sequence", "local"] = Field(
        "sequence", description="'sequence' (method.md): one advantage per sample, applied to every token's "
        "log-prob. 'local' (extension): each token's advantage comes from the discriminator's per-position "
        "rewards summed over a window of +-credit_window positions around it (baseline per position, "
        "losses.local_advantages), so a misspelt word is blamed on its own letters rather than on all L.")
    credit_window: int = Field(
        4, ge=0, description="Half-width w of the window ('local' credit): a token's reward sums the "
        "per-position rewards of the 2w + 1 positions around it (4: about a word of English characters).")

    # ------------------------------------------------------------------ student loss (method.md §2.5)
    kl: Literal["forward", "reverse", "jeffrey"] = Field(
        "forward", description="Intermediate-state matching divergence: forward KL(teacher || student), "
        "reverse KL(student || teacher), or Jeffrey (1 - beta) forward + beta reverse.")
    jeffrey_beta: float = Field(0.5, ge=0.0, le=1.0, description="beta of the Jeffrey divergence.")
    kl_weight: float = Field(0.01, ge=0.0, description="Weight of the KL matching term, per state (0 = off).")
    entropy_weight: float = Field(5e-4, ge=0.0, description="Weight of the entropy bonus (0 = off).")
    student_lr: float = Field(
        1e-4, gt=0.0, description="Student AdamW learning rate. The paper uses 1e-6 for the 169M model; tiny "
        "models need more (tuned on the Markov domain, docs/distillation.md).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (student and discriminator).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (student and discriminator).")
    warmup_steps: int = Field(1000, ge=0, description="Student linear warm-up iterations, then linear decay to 0.")
    disc_warmup_steps: int | None = Field(
        None, ge=0, description="Discriminator warm-up iterations (None: warmup_steps). A short one lets the "
        "discriminator become informative while the student is still warming up.")
    iterations: int = Field(10_000, gt=0, description="Total distillation iterations.")
    student_grad_clip: float = Field(0.5, gt=0.0, description="Student grad-norm clip (non-finite grads zeroed first).")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA of the student; sampling uses the EMA weights.")

    # ------------------------------------------------------------------ run
    batch_rows: int = Field(8, gt=0, description="Data rows per iteration; student samples = batch_rows * group_size.")
    seed: int = Field(0, description="One seed for data order, rollout noise and corruption.")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    bf16: bool | None = Field(
        None, description="bf16 autocast for network passes. None: on CUDA only; true: on every device (about "
        "1.5-2x on CPUs with AVX512-BF16 or AMX); false: off.")
    log_every: int = Field(10, gt=0, description="Progress-bar refresh period (metrics.jsonl gets every iteration).")
    save_every: int = Field(1000, gt=0, description="Checkpoint (student, discriminator, training state) period.")
    keep_checkpoints: int = Field(2, gt=0, description="Training states kept (state/, state.1/, ...).")
    max_nonfinite: int = Field(20, ge=0, description="Consecutive non-finite losses (each skipped) that stop the run.")

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.rollout_steps is not None and not self.two_step:
            raise ValueError("rollout_steps sets the rollout's steps itself; leave two_step at true with it "
                             "(two_step=false is the one-step rollout, rollout_steps=1)")
        if self.tau_min >= self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must be < tau_max ({self.tau_max})")
        if self.reward_time_range is not None and not 0 < self.reward_time_range[0] < self.reward_time_range[1] < 1:
            raise ValueError(f"reward_time_range must be 0 < low < high < 1, got {self.reward_time_range}")
        if self.importance_weight and self.reward_times > 1:
            raise ValueError("importance_weight=true needs reward_times=1: with reward_times > 1 the reward is a "
                             "quadrature over fixed times, not a draw from the tau distribution, so there is no "
                             "density to divide by")
        low, high = self.omega_clamp
        if not 0 < low <= high:
            raise ValueError(f"omega_clamp must be 0 < low <= high, got {self.omega_clamp}")
        return self

    @property
    def samples_per_iteration(self) -> int:
        """Student samples per iteration (rows * G)."""
        return self.batch_rows * self.group_size


class RGASConfig(StrictModel):
    """Reward-guided ancestral sampling (method.md §3)."""

    rerank_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Fraction of the steps (the last ones) that re-rank.")
    h_start: float = Field(30.0, description="Tilting scale at the first tilting step.")
    h_end: float = Field(40.0, description="Tilting scale at the last tilting step (linear in between).")
    grad_clip: float = Field(1.0, gt=0.0, description="Tilting gradient clamped to [-c, c].")
    candidates: int = Field(4, gt=0, description="M: candidate next states per re-ranking step.")
    score: Literal["all", "masked"] = Field(
        "all", description="Re-ranking score of a candidate: 'all' = sum of discriminator logits over every "
        "position (reference code); 'masked' = mean over positions still masked in the candidate "
        "(0 when none is left, which makes the last step uniform).")
    temperature: float = Field(1.0, gt=0.0, description="Candidates are drawn from softmax(scores / temperature).")


#: (name, overrides) of the paper's cumulative ablation, applied in order on top of the "none" rung.
_LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("+ two-step decomposition", ("two_step",)),
    ("+ coupled tau", ("coupled_tau",)),
    ("+ omega weighting", ("omega",)),
    ("+ tau distribution", ("tau_alpha", "tau_beta", "tau_min", "tau_max", "importance_weight")),
    ("+ grouped normalisation", ("advantage_norm",)),
    ("+ KL matching", ("kl_weight",)),
    ("+ entropy bonus", ("entropy_weight",)),
)


def ablation_ladder(base: DistillConfig | None = None) -> list[tuple[str, DistillConfig]]:
    """The cumulative ablation: "none" (every technique off), then each technique of ``base`` in turn.

    "none" = one-step rollout, independent tau, constant omega, tau ~ U[1e-3, 0.999] unweighted, raw
    rewards as advantages, no KL matching, no entropy bonus. The last rung equals ``base``.
    """
    base = base or DistillConfig()
    none = base.model_copy(update=dict(
        two_step=False, coupled_tau=False, omega="constant", tau_alpha=1.0, tau_beta=1.0, tau_min=1e-3,
        tau_max=0.999, importance_weight=False, advantage_norm="none", kl_weight=0.0, entropy_weight=0.0))
    ladder = [("none", DistillConfig.model_validate(none.model_dump()))]
    current = none.model_dump()
    for name, fields in _LADDER:
        current.update({f: getattr(base, f) for f in fields})
        ladder.append((name, DistillConfig.model_validate(current)))
    return ladder
