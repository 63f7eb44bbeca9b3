"""What a distillation run writes, and how ``--resume`` reads it back exactly.

Output directory::

    OUT/student/          save_pretrained of the EMA student (what `sample` reads); extra: teacher, config
    OUT/discriminator/    the discriminator (safetensors + JSON), for RGAS
    OUT/state/            training state for --resume: raw student, EMA, discriminator, both AdamW and
                          schedules, iteration, the noise generator and torch RNG
    OUT/metrics.jsonl     one JSON line per iteration, flushed

Decisions: the student is saved as its EMA, as an ordinary model, so `sample` and `eval` need to know
nothing of distillation; the training state is `discdistill.checkpoint.save_training_state`'s, with
every rank's noise generator in its JSON meta (base64 bytes), so each rank continues its own stream;
rank 0 writes, and a resume refuses a changed configuration except in the
fields that do not affect the numbers.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from discdistill.checkpoint import load_latest_training_state, save_pretrained, save_training_state
from discdistill.distill.discriminator import save_discriminator
from discdistill.runtime import NonfiniteGuard, check_resumable

if TYPE_CHECKING:  # the trainer imports this module
    from discdistill.distill.trainer import DistillTrainer

STUDENT_DIR, DISC_DIR, STATE_DIR, METRICS_FILE = "student", "discriminator", "state", "metrics.jsonl"
DISTILL_ARTEFACTS = (STUDENT_DIR, DISC_DIR, STATE_DIR, METRICS_FILE)
#: Config fields that may change between a run and its resume (they do not affect the numbers).
_RESUMABLE_CHANGES = frozenset({"log_every", "save_every", "device", "keep_checkpoints", "max_nonfinite"})


def _generator_state(generator: torch.Generator) -> str:
    """``generator``'s state as text, for the JSON meta of a training state."""
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode()


def _set_generator_state(generator: torch.Generator, state: str) -> None:
    generator.set_state(torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8))


def _state_parts(trainer: DistillTrainer) -> dict[str, dict[str, Any]]:
    """The named modules, optimisers and schedules of a training state (keyword arguments of save and load)."""
    return {
        "modules": {"student": trainer.student.network, "ema": trainer.student.ema_model(),
                    "discriminator": trainer.disc},
        "optimizers": {"student": trainer.opt_student, "discriminator": trainer.opt_disc},
        "schedulers": {"student": trainer.sched_student, "discriminator": trainer.sched_disc},
    }


def save_run(trainer: DistillTrainer) -> Path:
    """Write student (EMA), discriminator and training state (rank 0); return the student directory."""
    generators = trainer.ctx.gather(_generator_state(trainer.generator))  # every rank's noise stream
    trainer.ctx.on_main(lambda: _write_run(trainer, generators))
    trainer.on_checkpoint()
    return trainer.out_dir / STUDENT_DIR


def _write_run(trainer: DistillTrainer, generators: list[Any]) -> Path:
    """Write OUT/discriminator, OUT/state (keeping ``keep_checkpoints``) and OUT/student; return OUT/student."""
    config = trainer.config.model_dump(mode="json")
    extra = {"teacher": trainer.teacher_path, "distill_config": config, "iteration": trainer.iteration,
             "weights": "ema", "ema_decay": trainer.config.ema_decay}
    save_discriminator(trainer.disc, trainer.out_dir / DISC_DIR, extra={"teacher": trainer.teacher_path,
                                                                       "iteration": trainer.iteration})
    save_training_state(trainer.out_dir / STATE_DIR, **_state_parts(trainer),
                        meta={"iteration": trainer.iteration, "config": config, "teacher": trainer.teacher_path,
                              "generator": generators[0], "generators": generators, **trainer.guard.state()},
                        keep=trainer.config.keep_checkpoints)
    return save_pretrained(trainer.student.ema_model(), trainer.out_dir / STUDENT_DIR, extra=extra,
                           run=trainer.run_settings)


def restore_run(trainer: DistillTrainer) -> None:
    """Restore ``trainer`` from the newest intact OUT/state (the run must have the same configuration)."""
    meta, _ = load_latest_training_state(trainer.out_dir / STATE_DIR, **_state_parts(trainer))
    check_resumable(meta["config"], trainer.config.model_dump(mode="json"), _RESUMABLE_CHANGES, trainer.out_dir)
    generators = meta.get("generators", [meta["generator"]])
    if trainer.ctx.rank < len(generators):  # ranks a resumed run adds keep their fresh, rank-seeded stream
        _set_generator_state(trainer.generator, generators[trainer.ctx.rank])
    trainer.guard = NonfiniteGuard(trainer.config.max_nonfinite, meta.get("nonfinite_skipped", 0),
                                   meta.get("nonfinite_streak", 0))
    trainer.iteration = int(meta["iteration"])
