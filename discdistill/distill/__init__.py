"""DiDi-Instruct: distil a masked diffusion teacher into a few-step student (method.md §2-§3).

    from discdistill.distill import DistillConfig, distill, load_rgas
    student_dir = distill(DistillConfig(iterations=2000), "teacher/", train_ids, "runs/distill")

One concept a module: `config` (every switch), `losses` (pure functions), `rollout` (the two-step
student rollout), `discriminator` (teacher copy + per-token head), `trainer` (the loop, checkpoints,
resume), `rgas` (reward-guided ancestral sampling).
"""

from discdistill.distill.config import DistillConfig, RGASConfig, ablation_ladder
from discdistill.distill.discriminator import (
    DiTDiscriminator,
    load_discriminator,
    save_discriminator,
)
from discdistill.distill.rgas import RGAS, load_rgas
from discdistill.distill.rollout import Rollout, student_rollout
from discdistill.distill.trainer import DistillTrainer, distill

__all__ = [
    "DistillConfig", "RGASConfig", "ablation_ladder", "DiTDiscriminator", "load_discriminator",
    "save_discriminator", "RGAS", "load_rgas", "Rollout", "student_rollout", "DistillTrainer", "distill",
]
