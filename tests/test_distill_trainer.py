"""DiDi-Instruct engine: rollout log-probs, discriminator, trainer sign, exact resume, output layout."""

from __future__ import annotations

import json

import pytest
import torch

from discdistill.checkpoint import load_pretrained
from discdistill.diffusion import LogLinearSchedule, corrupt
from discdistill.distill.config import DistillConfig
from discdistill.distill.discriminator import DiTDiscriminator, load_discriminator, save_discriminator
from discdistill.distill.losses import discriminator_accuracy, discriminator_loss
from discdistill.distill.rollout import grid_rollout, sample_tau, student_rollout
from discdistill.distill.trainer import DistillTrainer, distill
from discdistill.errors import ConfigError, DataError
from discdistill.models import DiT
from discdistill.sampling import sample
from tests.conftest import small_dit

V, L, MASK = 6, 8, 5


def tiny_dit(seed: int = 0, blocks: int = 2) -> DiT:
    return small_dit(V, MASK, L, seed=seed, blocks=blocks).train()


def tiny_config(**overrides) -> DistillConfig:
    base = dict(iterations=4, warmup_steps=1, batch_rows=2, group_size=4, device="cpu", student_lr=1e-3,
                disc_lr=1e-3, save_every=1000, disc_blocks=1)
    return DistillConfig(**{**base, **overrides})


def independent_log_prob(model, state, next_state):
    """sum over positions masked in state and unmasked in next_state of log softmax(logits without mask)[token]."""
    with torch.no_grad():
        logits = model(state, torch.zeros(state.shape[0])).double()
    logits[..., MASK] = -float("inf")
    log_p = logits - torch.logsumexp(logits, -1, keepdim=True)
    total = torch.zeros(state.shape[0], dtype=torch.float64)
    for b in range(state.shape[0]):
        for j in range(state.shape[1]):
            if state[b, j] == MASK and next_state[b, j] != MASK:
                total[b] += log_p[b, j, next_state[b, j]]
    return total


def test_rollout_log_prob_matches_independent_recomputation():
    model = tiny_dit().eval()
    gen = torch.Generator().manual_seed(3)
    tau = sample_tau(16, 1.0, 1.0, 0.02, 0.98, gen)
    r = student_rollout(model, tau, seq_len=L, mask_id=MASK, generator=gen)
    assert r.x_fake.shape == (16, L) and not bool((r.x_fake == MASK).any())
    z1 = torch.full((16, L), MASK)
    assert torch.equal(r.steps[0].state, z1)
    # positions unmasked by step 1 are kept by step 2
    kept = r.z_tau != MASK
    assert torch.equal(r.x_fake[kept], r.z_tau[kept])
    assert torch.allclose(r.lp1.double(), independent_log_prob(model, z1, r.z_tau), atol=1e-4)
    assert torch.allclose(r.lp2.double(), independent_log_prob(model, r.z_tau, r.x_fake), atol=1e-4)
    assert torch.allclose(r.log_prob, r.lp1 + r.lp2)
    # gradients reach the model through both steps
    r.log_prob.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_rollout_unmask_fraction_follows_tau():
    model = tiny_dit().eval()
    gen = torch.Generator().manual_seed(0)
    tau = torch.full((2000,), 0.25)
    with torch.no_grad():
        r = student_rollout(model, tau, seq_len=L, mask_id=MASK, generator=gen)
    # P(unmasked at step 1) = (alpha_tau - alpha_1) / (1 - alpha_1) = 1 - tau (eps = 1e-3)
    frac = float((r.z_tau != MASK).double().mean())
    eps = 1e-3
    expected = ((1 - (1 - eps) * 0.25) - eps) / (1 - eps)
    assert frac == pytest.approx(expected, abs=0.01)
    one = student_rollout(model, tau[:8], seq_len=L, mask_id=MASK, two_step=False, generator=gen)
    assert one.z_tau is None and one.lp2 is None and not bool((one.x_fake == MASK).any())


class PairTable(torch.nn.Module):
    """L = 2, V = 3 (+ mask 3): position i's logits are a row of a fixed table chosen by the other position's id,
    so the joint law of a K-step sampler depends on K (which positions are drawn together)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(
            [[3.0, 0.0, -2.0, 0.0], [-2.0, 2.5, 0.0, 0.0], [0.0, -1.0, 2.0, 0.0], [0.5, 0.0, -0.5, 0.0]]))

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.table[z.flip(-1)]


def joint_histogram(x: torch.Tensor) -> torch.Tensor:
    return torch.bincount(x[:, 0] * 3 + x[:, 1], minlength=9).double() / x.shape[0]


def test_grid_rollout_draws_the_k_step_sampler_law_with_exact_log_probs():
    model, n, mask = PairTable(), 40_000, 3
    for steps in (1, 3):
        gen = torch.Generator().manual_seed(steps)
        with torch.no_grad():
            r = grid_rollout(model, torch.full((n,), 0.5), steps=steps, seq_len=2, mask_id=mask, generator=gen)
            reference = sample(model, num_samples=n, seq_len=2, steps=steps, mask_id=mask,
                               generator=torch.Generator().manual_seed(10 + steps)).ids
        assert len(r.steps) == steps and not bool((r.x_fake == mask).any())
        # the same law as the sampler at the same step count (SE of each cell <= 0.0025)
        assert (joint_histogram(r.x_fake) - joint_histogram(reference)).abs().max() < 0.012
        # each step's time is the sampler's grid point, and its log-prob the table's log-softmax at the tokens drawn
        assert torch.allclose(r.steps[-1].t, torch.linspace(1.0, 1e-5, steps + 1, dtype=torch.float64)[-2].expand(n))
        expected = torch.zeros(n, dtype=torch.float64)
        for step in r.steps:
            log_p = model.table.detach().double()[step.state.flip(-1)]
            log_p[..., mask] = -float("inf")
            log_p = log_p.log_softmax(-1).gather(-1, step.next_state.clamp(max=2).unsqueeze(-1)).squeeze(-1)
            expected += torch.where(step.unmasked, log_p, torch.zeros_like(log_p)).sum(-1)
        assert torch.allclose(r.log_prob.double(), expected, atol=1e-5)
    # one step draws the positions independently; three steps draw them (mostly) in turn: the laws differ
    one = grid_rollout(model, torch.full((n,), 0.5), steps=1, seq_len=2, mask_id=mask,
                       generator=torch.Generator().manual_seed(0)).x_fake
    assert (joint_histogram(one) - joint_histogram(r.x_fake)).abs().max() > 0.05
    grid_rollout(model, torch.full((4,), 0.5), steps=3, seq_len=2, mask_id=mask).log_prob.sum().backward()
    assert model.table.grad is not None and model.table.grad.abs().sum() > 0


def test_rollout_steps_trains_through_the_k_step_rollout_and_is_validated(tmp_path):
    with pytest.raises(ValueError, match="leave two_step at true"):
        DistillConfig(rollout_steps=4, two_step=False)
    data = torch.randint(0, MASK, (8, L))

    def one_iteration(tmp, **overrides):
        """(metrics, the states the student's rollout passes were given)."""
        trainer = DistillTrainer(tiny_config(kl_weight=0.1, **overrides), tiny_dit(), data, tmp, progress=False)
        calls, logits_at = [], trainer.student.network.logits_at
        trainer.student.network.logits_at = lambda z, sigma, where: calls.append(z.clone()) or logits_at(z, sigma, where)
        return trainer.step(), calls

    metrics, states = one_iteration(tmp_path / "grid", rollout_steps=3)
    # the student starts as a copy of the teacher: the KL over the three states is 0
    assert torch.isfinite(torch.tensor(metrics["loss_student"])) and metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    # three student passes, from the all-mask state, each on fewer masked positions than the one before
    masked = [int((z == MASK).sum()) for z in states]
    assert len(states) == 3 and masked[0] == 8 * L and masked[0] >= masked[1] >= masked[2] > 0
    _, two = one_iteration(tmp_path / "two")
    assert len(two) == 2


def test_discriminator_structure_and_save_load(tmp_path):
    teacher = tiny_dit(blocks=3)
    disc = DiTDiscriminator(teacher, trainable_blocks=2)
    trainable = {n.split(".")[2] for n, p in disc.named_parameters() if p.requires_grad and n.startswith("trunk.")}
    assert trainable == {"1", "2"}  # the last two blocks only
    assert not disc.trunk.vocab_embed.embedding.requires_grad if hasattr(disc.trunk.vocab_embed, "embedding") else True
    assert all(p.requires_grad for p in disc.head.parameters())
    assert DiTDiscriminator(teacher, trainable_blocks=10).trainable_blocks == 3
    z = torch.randint(0, V, (3, L))
    out = disc.eval()(z, torch.rand(3))
    assert out.shape == (3, L)
    soft = torch.nn.functional.one_hot(z, V).float()
    assert torch.allclose(disc(soft, torch.zeros(3)), disc(z, torch.zeros(3)), atol=1e-5)
    save_discriminator(disc, tmp_path / "disc")
    again = load_discriminator(tmp_path / "disc").eval()
    assert torch.equal(again(z, torch.zeros(3)), disc(z, torch.zeros(3)))
    assert any("parametrizations" in k for k in again.state_dict())


def test_discriminator_separates_two_known_distributions():
    """Real: a row repeats one token drawn from {0..3}; fake: i.i.d. uniform over {0..3}.

    Both have the same unigram law, so telling them apart at a masked position needs the context.
    """
    torch.manual_seed(0)
    disc = DiTDiscriminator(tiny_dit(), trainable_blocks=2).train()
    opt = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    schedule = LogLinearSchedule()

    def batch(n):
        real = torch.randint(0, 4, (n, 1), generator=gen).expand(n, L)
        fake = torch.randint(0, 4, (n, L), generator=gen)
        t = torch.rand(n, generator=gen) * 0.2 + 0.1  # most positions visible: the Bayes accuracy is ~1
        alpha = schedule.alpha(t)
        return corrupt(real, alpha, MASK, gen), corrupt(fake, alpha, MASK, gen), schedule.sigma(t)

    for _ in range(50):
        z_real, z_fake, sigma = batch(32)
        logits = disc(torch.cat([z_real, z_fake]), torch.cat([sigma, sigma]))
        loss = discriminator_loss(logits[:32], logits[32:], z_real == MASK, z_fake == MASK)
        opt.zero_grad()
        loss.backward()
        opt.step()
    disc.eval()
    z_real, z_fake, sigma = batch(256)
    with torch.no_grad():
        acc_real, acc_fake = discriminator_accuracy(disc(z_real, sigma), disc(z_fake, sigma), z_real == MASK,
                                                    z_fake == MASK)
    assert float(acc_real + acc_fake) / 2 > 0.9


class TokenZeroDiscriminator(torch.nn.Module):
    """Stand-in: every position's logit is 4 x (fraction of token 0 among unmasked positions of its row)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, sigma):
        visible = (z != MASK).float()
        frac = ((z == 0).float() * visible).sum(-1, keepdim=True) / visible.sum(-1, keepdim=True).clamp_min(1)
        return (4 * frac + self.unused).expand(z.shape)


def test_trainer_moves_the_student_towards_the_rewarded_token(tmp_path):
    teacher = tiny_dit()
    trainer = DistillTrainer(tiny_config(kl_weight=0.0, entropy_weight=0.0, student_lr=3e-3, iterations=12,
                                         warmup_steps=0, batch_rows=4, student_grad_clip=10.0),
                             teacher, torch.randint(0, V - 1, (32, L)), tmp_path, progress=False)
    trainer.disc = TokenZeroDiscriminator()
    trainer.opt_disc = torch.optim.SGD(trainer.disc.parameters(), lr=0.0)
    trainer.sched_disc = torch.optim.lr_scheduler.LambdaLR(trainer.opt_disc, lambda _: 1.0)
    all_mask = torch.full((1, L), MASK)

    def p0():
        with torch.no_grad():
            return float(trainer.student(all_mask, torch.zeros(1))[..., :MASK].softmax(-1)[..., 0].mean())

    before = p0()
    records = [trainer.step() for _ in range(12)]
    assert sum(r["reward_std"] > 0 for r in records) >= 10
    assert p0() > before + 0.05


def test_one_iteration_metrics_and_layout(tmp_path):
    teacher = tiny_dit()
    data = torch.randint(0, V - 1, (16, L))
    out = distill(tiny_config(iterations=2, kl="jeffrey"), teacher, data, tmp_path / "run", progress=False)
    assert out == tmp_path / "run" / "student"
    student = load_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["extra"]["distill_config"]["kl"] == "jeffrey" and config["extra"]["iteration"] == 2
    assert (tmp_path / "run" / "discriminator" / "discriminator.safetensors").is_file()
    assert (tmp_path / "run" / "state" / "state.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for key in ("loss_disc", "acc_real", "acc_fake", "reward_mean", "reward_std", "adv_mean", "adv_std", "adv_min",
                "adv_max", "kl_forward", "kl_reverse", "entropy", "grad_norm_student", "grad_norm_disc", "seconds"):
        assert key in lines[0]
    assert lines[0]["kl_forward"] >= 0 and lines[1]["kl"] > 0
    assert student(torch.full((1, L), MASK), torch.zeros(1)).shape == (1, L, V)
    with pytest.raises(ConfigError):  # refuses to overwrite a run without --resume
        distill(tiny_config(iterations=2), teacher, data, tmp_path / "run", progress=False)
    with pytest.raises(DataError):
        distill(tiny_config(), teacher, torch.full((4, L), MASK), tmp_path / "bad", progress=False)


def _params(trainer):
    return {f"{name}.{k}": v.clone() for name, module in (("s", trainer.student.network), ("e", trainer.student.ema),
                                                           ("d", trainer.disc))
            for k, v in module.state_dict().items()}


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    data = torch.randint(0, V - 1, (6, L))  # 6 rows, 2 per iteration: epochs turn over during the run
    config = tiny_config(iterations=4)
    full = DistillTrainer(config, tiny_dit(), data, tmp_path / "full", progress=False)
    full.run()
    first = DistillTrainer(config, tiny_dit(), data, tmp_path / "split", progress=False)
    first.run(until=2)
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    second = DistillTrainer(config, tiny_dit(), data, tmp_path / "split", progress=False)
    second.load()
    assert second.iteration == 2
    second.run()
    a, b = _params(full), _params(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    with pytest.raises(ConfigError):
        other = DistillTrainer(tiny_config(iterations=4, student_lr=1.0), tiny_dit(), data, tmp_path / "split",
                               progress=False)
        other.load()


def test_tau_per_group_and_reward_options(tmp_path):
    data = torch.randint(0, V - 1, (16, L))
    trainer = DistillTrainer(tiny_config(tau_per_group=True, reward_corruptions=3, disc_warmup_steps=0), tiny_dit(),
                             data, tmp_path, progress=False)
    tau = trainer._tau(8)
    assert torch.equal(tau[:4], tau[:1].expand(4)) and torch.equal(tau[4:], tau[4:5].expand(4))
    assert trainer.sched_disc.get_last_lr()[0] == pytest.approx(trainer.config.disc_lr)  # no disc warm-up
    record = trainer.step()
    assert all(torch.isfinite(torch.tensor(v)) for v in record.values() if isinstance(v, float))


def test_reward_fn_replaces_the_discriminator_reward(tmp_path):
    seen = []

    def reward_fn(x):
        seen.append(x.clone())
        return (x == 0).float().mean(-1)

    trainer = DistillTrainer(tiny_config(), tiny_dit(), torch.randint(0, V - 1, (16, L)), tmp_path, progress=False,
                             reward_fn=reward_fn)
    record = trainer.step()
    assert len(seen) == 1 and seen[0].shape == (8, L)
    assert record["reward_mean"] == pytest.approx(float((seen[0] == 0).float().mean()))


def test_rollout_step_with_nothing_masked():
    from discdistill.distill.rollout import rollout_step

    z = torch.randint(0, V - 1, (3, L))
    step = rollout_step(tiny_dit(), z, 0.5, 1.0, torch.zeros(3), MASK, t=0.5)
    assert torch.equal(step.next_state, z) and step.log_probs.shape == (0, V)
    assert torch.equal(step.log_prob, torch.zeros(3))


def test_disc_steps_makes_k_optimiser_steps_and_one_schedule_step(tmp_path):
    data = torch.randint(0, V - 1, (16, L))
    trainer = DistillTrainer(tiny_config(disc_steps=3, disc_warmup_steps=0), tiny_dit(), data, tmp_path,
                             progress=False)
    trainer.step()
    state = next(iter(trainer.opt_disc.state.values()))
    assert int(state["step"]) == 3  # AdamW's own count
    assert trainer.sched_disc.last_epoch == 1  # the schedule counts iterations


class _RecordingDisc(torch.nn.Module):
    """Stub discriminator: logit_j = 10 sigma + j (so the clamp bites), recording its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z, sigma):
        self.seen.append((z.clone(), sigma.clone()))
        return 10 * sigma[:, None] + torch.arange(z.shape[1], dtype=torch.float32)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_reward_over_quadrature_times_matches_hand_average(tmp_path, reduce):
    config = tiny_config(reward_times=2, reward_corruptions=3, reward_reduce=reduce, reward_time_range=(0.2, 0.8),
                         reward_clamp=5.0)
    trainer = DistillTrainer(config, tiny_dit(), torch.randint(0, V - 1, (16, L)), tmp_path, progress=False)
    trainer.disc = _RecordingDisc()
    x_fake = torch.randint(0, V - 1, (8, L))
    rewards = trainer._rewards(x_fake, x_fake, torch.full((8,), 0.5))
    (z, sigma), = trainer.disc.seen
    assert z.shape == (2 * 3 * 8, L)
    schedule = LogLinearSchedule()
    expected_sigma = schedule.sigma(torch.tensor([0.35, 0.65], dtype=torch.float64)).float()
    assert torch.allclose(sigma, expected_sigma.repeat_interleave(3 * 8))
    assert bool(((z == MASK) | (z == x_fake.repeat(6, 1))).all())  # views are corruptions of x_fake
    # quadrature weights omega(t) = (1 - eps) / (1 - alpha_t) = 1 / t at t = 0.35 and 0.65 (inside the clamp)
    weight = [1 / 0.35, 1 / 0.65]
    for i in range(8):
        per_view = []
        for v in range(6):
            row = z[v * 8 + i]
            values = [min(10 * float(sigma[v * 8 + i]) + j, 5.0) for j in range(L) if row[j] == MASK]
            per_view.append(sum(values) if reduce == "sum" else (sum(values) / len(values) if values else 0.0))
        per_time = [sum(per_view[:3]) / 3, sum(per_view[3:]) / 3]
        expected = (weight[0] * per_time[0] + weight[1] * per_time[1]) / sum(weight)
        assert float(rewards[i]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        tiny_config(reward_time_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="importance_weight=true needs reward_times=1"):
        tiny_config(reward_times=2, importance_weight=True)


def test_group_common_noise_shares_tau_unmasking_and_corruption(tmp_path):
    """With group_common_noise the G samples of a group differ only in their tokens' values."""
    config = tiny_config(group_common_noise=True, group_size=4, batch_rows=4)
    trainer = DistillTrainer(config, tiny_dit(), torch.randint(0, V - 1, (16, L)), tmp_path, progress=False)
    tau = trainer._tau(16)
    groups = tau.reshape(4, 4)
    assert torch.equal(groups, groups[:, :1].expand(4, 4))
    with torch.no_grad():
        r = student_rollout(trainer.student, tau, seq_len=L, mask_id=MASK, generator=trainer.generator, shared_rows=4)
    pattern = (r.z_tau == MASK).reshape(4, 4, L)
    assert torch.equal(pattern, pattern[:, :1].expand(4, 4, L))  # the same positions unmasked at step 1
    x = torch.randint(0, V - 1, (16, L))
    hidden = (corrupt(x, torch.full((16,), 0.5), MASK, trainer.generator, shared_rows=4) == MASK).reshape(4, 4, L)
    assert torch.equal(hidden, hidden[:, :1].expand(4, 4, L))
    assert 0 < float(hidden.float().mean()) < 1
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.step().values() if isinstance(v, float))


def test_the_ema_student_trains_its_network_and_averages_into_its_copy():
    from discdistill.distill.student import EMAStudent

    student = EMAStudent(small_dit(V, MASK, L, seed=3))
    student.train()
    assert student.network.training and not student.ema.training  # train() never touches the EMA's mode
    assert all(p.requires_grad for p in student.network.parameters())
    assert not any(p.requires_grad for p in student.ema.parameters())
    before = [p.clone() for p in student.ema.parameters()]
    with torch.no_grad():
        for p in student.network.parameters():
            p.add_(1.0)
    student.update_ema(0.75)  # ema <- 0.75 ema + 0.25 (ema + 1) = ema + 0.25
    for old, new in zip(before, student.ema.parameters()):
        torch.testing.assert_close(new, old + 0.25)
    z = torch.full((2, L), MASK)
    assert torch.equal(student(z, torch.zeros(2)), student.network(z, torch.zeros(2)))
    assert student.ema_model() is student.ema and student.vocab_size == V and student.mask_id == MASK


def test_position_log_prob_places_each_token_at_its_step():
    model = tiny_dit().eval()
    gen = torch.Generator().manual_seed(5)
    for rollout in (student_rollout(model, sample_tau(6, 1.0, 1.0, 0.02, 0.98, gen), seq_len=L, mask_id=MASK,
                                    generator=gen),
                    grid_rollout(model, torch.full((6,), 0.5), steps=3, seq_len=L, mask_id=MASK, generator=gen)):
        per_position = rollout.position_log_prob()
        assert per_position.shape == (6, L)
        assert torch.allclose(per_position.sum(-1), rollout.log_prob, atol=1e-5)
        for step in rollout.steps:  # each step's map is non-zero only where it unmasked
            assert bool((step.position_log_prob()[~step.unmasked] == 0).all())
            assert bool((step.position_log_prob()[step.unmasked] < 0).all())
        per_position.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_local_credit_reads_the_reward_map_of_the_same_views(tmp_path):
    config = tiny_config(reward_times=2, reward_corruptions=3, reward_time_range=(0.2, 0.8), reward_clamp=5.0,
                         disc_objective="sequence")
    trainer = DistillTrainer(config, tiny_dit(), torch.randint(0, V - 1, (16, L)), tmp_path, progress=False)
    trainer.disc = _RecordingDisc()
    x_fake = torch.randint(0, V - 1, (8, L))
    state = trainer.generator.get_state()
    reward_map = trainer._reward_map(x_fake, x_fake, torch.full((8,), 0.5))
    trainer.generator.set_state(state)
    rewards = trainer._rewards(x_fake, x_fake, torch.full((8,), 0.5))
    assert reward_map.shape == (8, L)
    # every position's logit is 10 sigma + j; clamped to 5 per position, the omega-weighted mean over times
    schedule = LogLinearSchedule()
    sigmas = schedule.sigma(torch.tensor([0.35, 0.65], dtype=torch.float64)).float()
    weight = torch.tensor([1 / 0.35, 1 / 0.65])
    per_time = torch.stack([(10 * s + torch.arange(L)).clamp(max=5.0) for s in sigmas])
    assert torch.allclose(reward_map, (weight @ per_time / weight.sum()).expand(8, L), rtol=1e-5)
    # the per-sample reward of the same views clamps each view's sum at c L = 40 instead
    per_view_sum = (10 * sigmas[:, None] + torch.arange(L)).sum(-1).clamp(max=5.0 * L)
    assert torch.allclose(rewards, (weight @ per_view_sum / weight.sum()).expand(8), rtol=1e-5)


def test_local_credit_trains_and_refuses_a_per_sample_reward_fn(tmp_path):
    data = torch.randint(0, V - 1, (16, L))
    trainer = DistillTrainer(tiny_config(credit="local", credit_window=1, disc_objective="sequence",
                                         advantage_norm="batch"), tiny_dit(), data, tmp_path / "a", progress=False)
    before = {k: v.clone() for k, v in trainer.student.network.state_dict().items()}
    record = trainer.step()
    assert all(torch.isfinite(torch.tensor(v)) for v in record.values() if isinstance(v, float))
    assert record["loss_pg"] != 0.0 and record["adv_std"] > 0
    after = trainer.student.network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="credit='local' needs the discriminator"):
        DistillTrainer(tiny_config(credit="local"), tiny_dit(), data, tmp_path / "b", progress=False,
                       reward_fn=lambda x: x.float().mean(-1))
    with pytest.raises(ValueError):
        tiny_config(credit="window")
