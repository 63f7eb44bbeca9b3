"""Teacher pre-training: the MDLM ELBO on token blocks, with exact resume.

    loss = E_t [ (1 - eps)/(1 - alpha_t) * sum_{j: z_j = m} -log p(x_j | z_t) ] / L      (diffusion.mdlm_loss)

Output directory layout::

    OUT/model/            the teacher (save_pretrained): what `sample` and `train` read
    OUT/checkpoint/       training state (weights, AdamW, schedule, RNG, step) for --resume
    OUT/metrics.jsonl     one JSON line per logged step / validation
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from discdistill.checkpoint import load_training_state, save_pretrained, save_training_state
from discdistill.config import PretrainConfig, model_config_from_preset
from discdistill.data import EpochBatches
from discdistill.diffusion import LogLinearSchedule, antithetic_times, corrupt, mdlm_loss_at_masked
from discdistill.errors import CheckpointError, DataError, DiscdistillError
from discdistill.models import DiT
from discdistill.optim import clip_grad_norm_finite_, make_adamw, warmup_linear_decay

MODEL_DIR, STATE_DIR, METRICS_FILE = "model", "checkpoint", "metrics.jsonl"


class TrainingInterrupted(DiscdistillError):
    """SIGINT/SIGTERM arrived; the state after the last full step was saved."""


class StopRequest:
    """While active, SIGINT and SIGTERM set ``requested`` instead of killing the loop mid-step.

    The loop checks the flag after each full optimiser step, saves a checkpoint and stops, so the
    saved state is always consistent. A second signal restores the default handler (kill now).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_teacher(config: PretrainConfig, vocab_size: int, mask_id: int, seq_len: int) -> DiT:
    model_config = model_config_from_preset(
        config.model_preset, vocab_size=vocab_size, mask_id=mask_id, seq_len=seq_len, **config.model_overrides
    )
    return DiT(model_config)


def diffusion_loss(model: DiT, x: torch.Tensor, schedule: LogLinearSchedule, t_min: float, time_conditioned: bool,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One Monte-Carlo estimate of the MDLM ELBO per token on the batch ``x`` (antithetic t)."""
    t = antithetic_times(x.shape[0], x.device, generator, t_min=t_min)
    z = corrupt(x, schedule.alpha(t), model.mask_id, generator)
    sigma = schedule.sigma(t) if time_conditioned else torch.zeros_like(t)
    masked = z == model.mask_id
    return mdlm_loss_at_masked(model.logits_at(z, sigma, masked), x, masked, t, schedule, model.mask_id)


@torch.no_grad()
def validation_nll(model: DiT, data: torch.Tensor, config: PretrainConfig, device: torch.device) -> float:
    """ELBO NLL per token (nats) on fixed validation batches with fixed noise: comparable across evals."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(config.seed + 12345)
    schedule = LogLinearSchedule(config.schedule.eps)
    total = 0.0
    batches = [data[i:i + config.batch_size] for i in range(0, len(data), config.batch_size)][:config.eval_batches]
    for batch in batches:
        loss = diffusion_loss(model, batch.to(device).long(), schedule, config.t_min, config.time_conditioned, generator)
        total += loss.item() * len(batch)
    model.train(was_training)
    return total / sum(len(b) for b in batches)


class MetricsLog:
    """Append-only JSONL, flushed each line so a crash loses nothing already logged.

    Lines past ``start_step`` (left by a run that died after its last checkpoint) are dropped, so a
    resumed run's log has each step once.
    """

    def __init__(self, path: Path, start_step: int = 0) -> None:
        kept = []
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.handle = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def pretrain(
    config: PretrainConfig,
    train: torch.Tensor,
    validation: torch.Tensor,
    out_dir: str | Path,
    *,
    vocab_size: int,
    mask_id: int,
    resume: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Train a DiT teacher on ``train`` blocks [N, L]; return the saved model directory (OUT/model)."""
    out_dir = Path(out_dir)
    if train.dim() != 2 or len(train) == 0:
        raise DataError("the training set is empty: no full block of tokens could be built from the input")
    if len(validation) == 0:
        raise DataError("the validation set is empty: provide more data or a shorter --seq-len")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    seq_len = train.shape[1]
    model = build_teacher(config, vocab_size, mask_id, seq_len).to(device)
    optimizer = make_adamw(model.parameters(), config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_linear_decay(optimizer, config.warmup_steps, config.steps)
    schedule = LogLinearSchedule(config.schedule.eps)
    batches = EpochBatches(len(train), config.batch_size, config.seed)
    start = 0
    if resume:
        if not (out_dir / STATE_DIR).exists():
            raise CheckpointError(f"--resume: no checkpoint in {out_dir / STATE_DIR}; start without --resume")
        meta = load_training_state(out_dir / STATE_DIR, modules={"model": model}, optimizers={"model": optimizer},
                                   schedulers={"model": scheduler})
        if meta["config"] != config.model_dump():
            raise CheckpointError(f"--resume: {out_dir} was trained with a different configuration; "
                                  "use the same options or a new --out directory")
        start = meta["step"]
    out_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out_dir / METRICS_FILE, start_step=start)

    def checkpoint(step: int) -> None:
        save_training_state(out_dir / STATE_DIR, modules={"model": model}, optimizers={"model": optimizer},
                            schedulers={"model": scheduler}, meta={"step": step, "config": config.model_dump()})

    model.train()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="pretrain", disable=not progress)
    stop = StopRequest()
    with stop:
        for step in bar:
            tic = time.perf_counter()
            x = train[batches.indices(step)].to(device).long()  # memory-mapped corpora may be uint16
            loss = diffusion_loss(model, x, schedule, config.t_min, config.time_conditioned)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = clip_grad_norm_finite_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            done, loss_value = step + 1, loss.item()
            if done % config.log_every == 0 or done == config.steps:
                record = {"step": done, "loss": loss_value, "grad_norm": grads.norm, "nonfinite_grad": grads.nonfinite,
                          "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - tic}
                if done % config.eval_every == 0 or done == config.steps:
                    record["val_nll"] = validation_nll(model, validation, config, device)
                    record["val_ppl_bound"] = math.exp(record["val_nll"])
                    bar.write(f"step {done}: train loss {loss_value:.4f}, validation NLL {record['val_nll']:.4f} "
                              f"nats/token (PPL <= {record['val_ppl_bound']:.1f})")
                log.write(record)
                bar.set_postfix(loss=f"{loss_value:.3f}")
            if stop.requested:
                checkpoint(done)
                log.close()
                raise TrainingInterrupted(f"interrupted at step {done}: checkpoint saved in {out_dir / STATE_DIR}; "
                                          "continue with --resume")
            if done % config.save_every == 0 and done < config.steps:
                checkpoint(done)
    log.close()
    bar.close()
    checkpoint(config.steps)
    info = {"steps": config.steps, "config": config.model_dump(), "time_conditioned": config.time_conditioned,
            "val_nll": validation_nll(model, validation, config, device)}
    return save_pretrained(model, out_dir / MODEL_DIR, extra={**info, **(extra or {})})
