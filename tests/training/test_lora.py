"""LoRA as a pytree transformation: identity at init and at scale 0, merged == unmerged, base frozen while
training, per-layer targets, file round trip, per-expert merge."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.errors import CheckpointFormatError, ConfigError, InputFileError
from wan22_jax.training import lora as L
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.step import init_state, make_eval_loss, make_train_step

from .conftest import make_batch, rel_err

CFG = L.LoraConfig(rank=2, alpha=4.0, targets=("blocks.*.self_attn.q", "blocks.1.ffn.0", "head.head"))


def _randomised(lora, seed=0):
    rng = np.random.default_rng(seed)
    return {p: {"a": ab["a"], "b": jnp.asarray(rng.standard_normal(ab["b"].shape), jnp.float32) * 0.1}
            for p, ab in lora.items()}


def _forward(graphdef, params, batch):
    model = nnx.merge(graphdef, params)
    lat, ctx = batch["latents"][0], batch["context"][0]
    return model(lat, jnp.full((lat.shape[0],), 500.0), ctx)


def test_targets_and_identity_at_init(tiny_dit):
    graphdef, params = tiny_dit
    lora = L.init_lora(params, CFG)
    assert set(lora) == {"blocks.self_attn.q.kernel", "blocks.ffn.0.kernel", "head.head.kernel"}
    assert lora["blocks.self_attn.q.kernel"]["a"].shape == (2, 32, 2)
    assert lora["head.head.kernel"]["b"].shape == (2, 16)  # patch 1x2x2 x out_dim 4
    assert rel_err(L.apply_lora(params, lora, CFG), params) == 0.0
    trained = _randomised(lora)
    assert rel_err(L.apply_lora(params, trained, CFG, scale=0.0), params) == 0.0
    merged = L.flatten(L.apply_lora(params, trained, CFG))
    flat = L.flatten(params)
    # "blocks.1.ffn.0" adapts layer 1 only
    np.testing.assert_array_equal(np.asarray(merged["blocks.ffn.0.kernel"][0]), np.asarray(flat["blocks.ffn.0.kernel"][0]))
    assert not np.array_equal(np.asarray(merged["blocks.ffn.0.kernel"][1]), np.asarray(flat["blocks.ffn.0.kernel"][1]))
    delta = np.asarray(merged["head.head.kernel"] - flat["head.head.kernel"])
    ab = trained["head.head.kernel"]
    np.testing.assert_allclose(delta, 2.0 * np.asarray(ab["a"]) @ np.asarray(ab["b"]), rtol=1e-5, atol=1e-6)


def test_unknown_pattern_is_refused(tiny_dit):
    with pytest.raises(ConfigError, match="match no Linear"):
        L.init_lora(tiny_dit[1], L.LoraConfig(targets=("blocks.*.self_attention.q",)))


def test_merged_equals_unmerged_and_scale_is_linear(tiny_dit):
    graphdef, params = tiny_dit
    lora = _randomised(L.init_lora(params, CFG), seed=1)
    batch = make_batch(1, 2)
    merged = L.apply_lora(params, lora, CFG, 0.7)
    out_merged = jax.jit(lambda p: _forward(graphdef, p, batch))(merged)
    out_unmerged = jax.jit(lambda lo, s: _forward(graphdef, L.apply_lora(params, lo, CFG, s), batch))(lora, 0.7)
    base = _forward(graphdef, params, batch)
    assert float(jnp.max(jnp.abs(out_merged - out_unmerged))) <= 1e-6 * float(jnp.max(jnp.abs(out_merged)))
    assert float(jnp.max(jnp.abs(out_merged - base))) > 1e-3
    # scale 0 through the unmerged path is the base model
    zero = jax.jit(lambda lo, s: _forward(graphdef, L.apply_lora(params, lo, CFG, s), batch))(lora, 0.0)
    assert float(jnp.max(jnp.abs(zero - base))) <= 1e-6 * float(jnp.max(jnp.abs(base)))


def test_training_moves_only_the_adapter(tiny_dit):
    graphdef, params = tiny_dit
    before = jax.tree.map(np.array, params)
    cfg = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=25)
    params_fn = L.lora_params_fn(CFG)
    step = make_train_step(graphdef, cfg, params_fn)
    state = init_state(L.init_lora(params, CFG), cfg)
    batch = make_batch(1, 4, seed=2)
    eval_loss = make_eval_loss(graphdef, cfg, params_fn)
    first = float(eval_loss(state["params"], jax.tree.map(lambda x: x[0], batch), 0.5, params))
    for _ in range(25):
        state, m = step(state, batch, params)
    last = float(eval_loss(state["params"], jax.tree.map(lambda x: x[0], batch), 0.5, params))
    assert last < 0.9 * first  # the adapter fits the fine-tuning data
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, before)  # base frozen
    assert set(L.flatten(state["params"])) == {f"{p}.{k}" for p in L.init_lora(params, CFG) for k in "ab"}


def test_file_round_trip_and_per_expert_merge(tmp_path, tiny_dit):
    graphdef, params = tiny_dit
    lora = _randomised(L.init_lora(params, CFG), seed=3)
    path = L.save_lora(tmp_path / "adapter.safetensors", lora, CFG)
    assert path.stat().st_size < 20_000
    loaded, cfg = L.load_lora(path)
    assert cfg == CFG
    assert rel_err(loaded, lora) == 0.0
    state = nnx.merge(graphdef, params)
    _, st = nnx.split(state)
    pipe = types.SimpleNamespace(experts={"high_noise_model": (graphdef, st), "low_noise_model": (graphdef, st)})
    L.merge_into_pipeline(pipe, {"low_noise_model": (loaded, cfg)}, scale=0.5)
    low = nnx.to_pure_dict(pipe.experts["low_noise_model"][1])
    high = nnx.to_pure_dict(pipe.experts["high_noise_model"][1])
    assert rel_err(high, params) == 0.0
    assert rel_err(low, L.apply_lora(params, lora, CFG, 0.5)) == 0.0
    with pytest.raises(ConfigError, match="no expert"):
        L.merge_into_pipeline(pipe, {"model": (loaded, cfg)})
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointFormatError, match=r"bad\.safetensors"):
        L.load_lora(tmp_path / "bad.safetensors")
    with pytest.raises(InputFileError, match="no such LoRA file"):
        L.load_lora(tmp_path / "missing.safetensors")
