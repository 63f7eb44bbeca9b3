"""MDLM checkpoint import: key mapping, EMA, config inference, numerics, and refusal of unsafe pickles.

The key list and shapes below are written out from MDLM's published models/dit.py (``DIT``), not taken
from our code, and `reference_forward` re-implements MDLM's forward on those raw tensors, so a naming
or layout mistake in either the DiT or the importer shows up as a mismatch.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from discdistill.config import ModelConfig
from discdistill.errors import CheckpointError
from discdistill.mdlm_files import read_mdlm_state_dict
from discdistill.mdlm_import import (
    convert_mdlm_state_dict,
    import_mdlm,
    mdlm_parameter_names,
)
from discdistill.models import DiT

V, H, C, N, HEADS, L, B = 13, 32, 16, 2, 4, 6, 2
D = H // HEADS


def mdlm_shapes() -> dict[str, tuple[int, ...]]:
    """MDLM DIT state-dict keys and shapes, in its state_dict order (rotary buffer after sigma_map)."""
    shapes: dict[str, tuple[int, ...]] = {
        "vocab_embed.embedding": (V, H),
        "sigma_map.mlp.0.weight": (C, 256), "sigma_map.mlp.0.bias": (C,),
        "sigma_map.mlp.2.weight": (C, C), "sigma_map.mlp.2.bias": (C,),
        "rotary_emb.inv_freq": (D // 2,),
    }
    for n in range(N):
        shapes.update({
            f"blocks.{n}.norm1.weight": (H,), f"blocks.{n}.attn_qkv.weight": (3 * H, H),
            f"blocks.{n}.attn_out.weight": (H, H), f"blocks.{n}.norm2.weight": (H,),
            f"blocks.{n}.mlp.0.weight": (4 * H, H), f"blocks.{n}.mlp.0.bias": (4 * H,),
            f"blocks.{n}.mlp.2.weight": (H, 4 * H), f"blocks.{n}.mlp.2.bias": (H,),
            f"blocks.{n}.adaLN_modulation.weight": (6 * H, C), f"blocks.{n}.adaLN_modulation.bias": (6 * H,),
        })
    shapes.update({
        "output_layer.norm_final.weight": (H,),
        "output_layer.linear.weight": (V, H), "output_layer.linear.bias": (V,),
        "output_layer.adaLN_modulation.weight": (2 * H, C), "output_layer.adaLN_modulation.bias": (2 * H,),
    })
    return shapes


def synthetic_mdlm(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random MDLM backbone tensors (non-zero everywhere, so zero-init cannot hide a bug)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=gen) * 0.3 for k, shape in mdlm_shapes().items()}
    sd["rotary_emb.inv_freq"] = 1.0 / 10_000 ** (torch.arange(0, D, 2).float() / D)
    return sd


def reference_forward(p: dict[str, torch.Tensor], ids: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """MDLM's DIT forward, functionally, from its raw tensors (eval mode)."""
    batch, length = ids.shape
    x = p["vocab_embed.embedding"][ids]
    freqs = torch.exp(-math.log(10_000) * torch.arange(128).float() / 128)
    t = torch.cat([torch.cos(sigma[:, None] * freqs), torch.sin(sigma[:, None] * freqs)], -1)
    t = F.linear(F.silu(F.linear(t, p["sigma_map.mlp.0.weight"], p["sigma_map.mlp.0.bias"])),
                 p["sigma_map.mlp.2.weight"], p["sigma_map.mlp.2.bias"])
    c = F.silu(t)
    angles = torch.arange(length).float()[:, None] * p["rotary_emb.inv_freq"][None]
    angles = torch.cat([angles, angles], -1)[:, None, :]  # [L, 1, d]: broadcast over heads

    def rope(u: torch.Tensor) -> torch.Tensor:  # u [B, L, heads, d]
        u1, u2 = u[..., : D // 2], u[..., D // 2:]
        return u * angles.cos() + torch.cat([-u2, u1], -1) * angles.sin()

    def norm(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(u, (H,)) * w

    for n in range(N):
        q = {k[len(f"blocks.{n}."):]: v for k, v in p.items() if k.startswith(f"blocks.{n}.")}
        modulation = F.linear(c, q["adaLN_modulation.weight"], q["adaLN_modulation.bias"])[:, None]
        s1, k1, g1, s2, k2, g2 = modulation.chunk(6, -1)
        h = norm(x, q["norm1.weight"]) * (1 + k1) + s1
        qkv = (h @ q["attn_qkv.weight"].T).view(batch, length, 3, HEADS, D)
        qq, kk, vv = rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2]
        weights = (torch.einsum("bihd,bjhd->bhij", qq, kk) / math.sqrt(D)).softmax(-1)
        attn = torch.einsum("bhij,bjhd->bihd", weights, vv).reshape(batch, length, H)
        x = x + g1 * (attn @ q["attn_out.weight"].T)
        h = norm(x, q["norm2.weight"]) * (1 + k2) + s2
        h = F.linear(F.gelu(F.linear(h, q["mlp.0.weight"], q["mlp.0.bias"]), approximate="tanh"),
                     q["mlp.2.weight"], q["mlp.2.bias"])
        x = x + g2 * h
    shift, scale = F.linear(c, p["output_layer.adaLN_modulation.weight"],
                            p["output_layer.adaLN_modulation.bias"])[:, None].chunk(2, -1)
    h = norm(x, p["output_layer.norm_final.weight"]) * (1 + scale) + shift
    return F.linear(h, p["output_layer.linear.weight"], p["output_layer.linear.bias"])


def load_converted(sd: dict[str, torch.Tensor], **kwargs: typing.Any) -> DiT:
    weights, fields = convert_mdlm_state_dict(sd, **kwargs)
    model = DiT(ModelConfig(**fields))
    model.load_state_dict(weights, strict=True)
    return model.eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, V, (B, L), generator=gen), torch.rand(B, generator=gen)


# ---------------------------------------------------------------------------------------------- names


def test_our_keys_shapes_and_order_are_mdlms() -> None:
    model = DiT(ModelConfig(vocab_size=V, mask_id=V - 1, seq_len=L, hidden_size=H, n_blocks=N, n_heads=HEADS,
                            cond_dim=C))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours.items()) == list(mdlm_shapes().items())
    param_order = [n for n, _ in model.named_parameters()]
    assert param_order == mdlm_parameter_names(N) == [k for k in mdlm_shapes() if k != "rotary_emb.inv_freq"]


# ------------------------------------------------------------------------------------- conversion


def test_hub_layout_converts_and_matches_reference_forward() -> None:
    raw = synthetic_mdlm()
    hub = {f"backbone.{k}": v for k, v in raw.items()}  # transformers MDLM wraps the DiT as `backbone`
    weights, fields = convert_mdlm_state_dict(hub)
    assert fields == dict(vocab_size=V, mask_id=V - 1, seq_len=1024, hidden_size=H, n_blocks=N, n_heads=HEADS,
                          cond_dim=C, mlp_ratio=4, dropout=0.1)
    model = load_converted(hub)
    ids, sigma = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, sigma), reference_forward(raw, ids, sigma), rtol=1e-4, atol=1e-4)


def test_bare_and_wrapped_prefixes() -> None:
    raw = synthetic_mdlm()
    ids, sigma = inputs()
    expected = reference_forward(raw, ids, sigma)
    for sd in (raw, {f"module.backbone._orig_mod.{k}": v for k, v in raw.items()}):
        with torch.no_grad():
            torch.testing.assert_close(load_converted(sd)(ids, sigma), expected, rtol=1e-4, atol=1e-4)


def test_half_precision_source_becomes_float32() -> None:
    weights, _ = convert_mdlm_state_dict({k: v.to(torch.bfloat16) for k, v in synthetic_mdlm().items()})
    assert all(v.dtype == torch.float32 for v in weights.values())


def test_missing_rotary_buffer_is_recomputed_with_default_heads() -> None:
    raw = synthetic_mdlm()
    inv_freq = raw.pop("rotary_emb.inv_freq")
    weights, fields = convert_mdlm_state_dict(raw, n_heads=HEADS)
    assert fields["n_heads"] == HEADS
    torch.testing.assert_close(weights["rotary_emb.inv_freq"], inv_freq)


def test_default_heads_are_hidden_over_64() -> None:
    """MDLM's presets all use head_dim 64 (small: 768 / 64 = 12 heads); that is the fallback."""
    wide = DiT(ModelConfig(vocab_size=3, mask_id=2, seq_len=4, hidden_size=128, n_blocks=1, n_heads=2, cond_dim=4))
    sd = {k: v for k, v in wide.state_dict().items() if k != "rotary_emb.inv_freq"}
    weights, fields = convert_mdlm_state_dict(sd)
    assert fields["n_heads"] == 2
    torch.testing.assert_close(weights["rotary_emb.inv_freq"], wide.rotary_emb.inv_freq)


def test_missing_rotary_and_no_default_heads_is_an_error() -> None:
    raw = synthetic_mdlm()
    del raw["rotary_emb.inv_freq"]
    with pytest.raises(CheckpointError, match="n_heads"):
        convert_mdlm_state_dict(raw)  # H = 32 is not a multiple of 64


def test_inconsistent_heads_refused() -> None:
    with pytest.raises(CheckpointError, match="head_dim"):
        convert_mdlm_state_dict(synthetic_mdlm(), n_heads=HEADS * 2)


def test_foreign_state_dicts_refused() -> None:
    raw = synthetic_mdlm()
    with pytest.raises(CheckpointError, match="unexpected"):
        convert_mdlm_state_dict({**raw, "blocks.0.extra.weight": torch.zeros(1)})
    causal = {k: v for k, v in raw.items() if not k.startswith("sigma_map")}  # DUO's AR variant has no sigma_map
    with pytest.raises(CheckpointError, match="sigma_map"):
        convert_mdlm_state_dict(causal)
    with pytest.raises(CheckpointError, match="vocab_embed"):
        convert_mdlm_state_dict({"weight": torch.zeros(2, 2)})


# ---------------------------------------------------------------------------- lightning checkpoints


def fake_metadata_class(monkeypatch: pytest.MonkeyPatch, module: str, name: str, calls: list[str]) -> type:
    """A class that pickles as ``module.name`` (like omegaconf's DictConfig) and records any unpickling."""
    cls = type(name, (), {"__module__": module, "__qualname__": name,
                          "__setstate__": lambda self, state: calls.append(name)})
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    setattr(sys.modules[module], name, cls)
    return cls


def write_lightning_ckpt(path: Path, raw: dict[str, torch.Tensor], ema: list[torch.Tensor],
                         monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """The layout of MDLM's lightning checkpoint: state_dict, ema, hyper_parameters with foreign objects."""
    config_cls = fake_metadata_class(monkeypatch, "omegaconf.dictconfig", "DictConfig", calls)
    tok_cls = fake_metadata_class(monkeypatch, "transformers.models.gpt2.tokenization_gpt2_fast",
                                  "GPT2TokenizerFast", calls)
    config, tokenizer = config_cls(), tok_cls()
    config.__dict__.update({"_content": {"model": {"hidden_size": H}}, "key_type": typing.Any})
    tokenizer.__dict__.update({"vocab": {"a": 0}})
    ckpt = {
        "epoch": 0, "global_step": 10, "pytorch-lightning_version": "2.2.1",
        "state_dict": {f"backbone.{k}": v for k, v in raw.items()},
        "ema": {"decay": 0.9999, "num_updates": 10, "shadow_params": ema},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 10}],
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 0}}}},
        "hyper_parameters": {"config": config, "tokenizer": tokenizer},
    }
    torch.save(ckpt, path)
    for module in ("omegaconf.dictconfig", "omegaconf", "transformers.models.gpt2.tokenization_gpt2_fast"):
        monkeypatch.delitem(sys.modules, module, raising=False)  # loading must not need (or import) them


def test_lightning_ckpt_prefers_ema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = synthetic_mdlm(0)
    shadow = synthetic_mdlm(1)  # different values: shows which set was loaded
    ema = [shadow[k] for k in mdlm_parameter_names(N)]
    calls: list[str] = []
    path = tmp_path / "mdlm.ckpt"
    write_lightning_ckpt(path, raw, ema, monkeypatch, calls)

    sd = read_mdlm_state_dict(path)
    assert calls == []  # metadata objects were never rebuilt
    assert {k for k in sd if k.startswith("backbone.")} == {f"backbone.{k}" for k in raw}
    assert sum(k.startswith("ema.shadow_params.") for k in sd) == len(ema)

    ids, sigma = inputs()
    expected_ema = reference_forward({**shadow, "rotary_emb.inv_freq": raw["rotary_emb.inv_freq"]}, ids, sigma)
    with torch.no_grad():
        torch.testing.assert_close(load_converted(sd)(ids, sigma), expected_ema, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(load_converted(sd, prefer_ema=False)(ids, sigma),
                                   reference_forward(raw, ids, sigma), rtol=1e-4, atol=1e-4)


def test_ema_out_of_order_refused() -> None:
    raw = synthetic_mdlm()
    names = mdlm_parameter_names(N)
    shuffled = [raw[k] for k in reversed(names)]
    sd = {**{f"backbone.{k}": v for k, v in raw.items()},
          **{f"ema.shadow_params.{i}": t for i, t in enumerate(shuffled)}}
    with pytest.raises(CheckpointError, match="EMA"):
        convert_mdlm_state_dict(sd)
    short = {k: v for k, v in sd.items() if k != f"ema.shadow_params.{len(names) - 1}"}
    with pytest.raises(CheckpointError, match="EMA"):
        convert_mdlm_state_dict(short)


# ------------------------------------------------------------------------------------------ safety


class SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[typing.Any, ...]:
        return os.system, (f"touch {self.marker}",)


class ExecCall(SystemCall):
    def __reduce__(self) -> tuple[typing.Any, ...]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [SystemCall, ExecCall])
def test_malicious_ckpt_refused_and_not_executed(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"backbone.x": payload(marker)}}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_mdlm_state_dict(path)
    assert not marker.exists()


def test_raw_pickle_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(SystemCall(marker), protocol=2))
    with pytest.raises(CheckpointError):
        read_mdlm_state_dict(path)
    assert not marker.exists()


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        read_mdlm_state_dict(junk)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError):
        read_mdlm_state_dict(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_mdlm_state_dict(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_mdlm_state_dict("models/nope.ckpt")  # a path-looking name is never sent to the hub


# ---------------------------------------------------------------------------------------------- hub


def test_hub_id_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(CheckpointError, match="local file"):
        read_mdlm_state_dict("kuleshov-group/mdlm-owt")


def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("huggingface_hub")

    def offline(*args: typing.Any, **kwargs: typing.Any) -> str:
        raise OSError("offline mode is enabled")

    fake.snapshot_download = offline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(CheckpointError, match="local"):
        read_mdlm_state_dict("kuleshov-group/mdlm-owt")


def hub_snapshot(directory: Path, raw: dict[str, torch.Tensor]) -> Path:
    """What snapshot_download leaves for kuleshov-group/mdlm-owt: config.json + model.safetensors."""
    directory.mkdir()
    save_file({f"backbone.{k}": v.contiguous() for k, v in raw.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({
        "model_type": "mdlm", "vocab_size": V, "model_length": L, "hidden_dim": H, "cond_dim": C,
        "n_blocks": N, "n_heads": HEADS, "dropout": 0.0, "time_conditioning": False}))
    return directory


def test_hub_id_downloads_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = hub_snapshot(tmp_path / "snap", synthetic_mdlm())
    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = lambda repo_id, **kw: str(snapshot)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    sd = read_mdlm_state_dict("kuleshov-group/mdlm-owt")
    assert set(sd) == {f"backbone.{k}" for k in mdlm_shapes()}


def test_import_mdlm_directory_uses_config_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = synthetic_mdlm()
    snapshot = hub_snapshot(tmp_path / "snap", raw)
    saved: dict[str, typing.Any] = {}

    def fake_save_pretrained(model: DiT, directory: str | Path, extra: dict | None = None) -> Path:
        saved.update(model=model, directory=directory, extra=extra)
        return Path(directory)

    fake = types.ModuleType("discdistill.checkpoint")
    fake.save_pretrained = fake_save_pretrained  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "discdistill.checkpoint", fake)
    out = import_mdlm(snapshot, tmp_path / "out")
    assert out == tmp_path / "out"
    model = saved["model"].eval()
    assert model.config.seq_len == L and model.config.dropout == 0.0 and model.config.n_heads == HEADS
    assert saved["extra"]["weights"] == "raw" and saved["extra"]["source_format"] == "mdlm"
    ids, sigma = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, sigma), reference_forward(raw, ids, sigma), rtol=1e-4, atol=1e-4)
