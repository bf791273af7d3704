"""The flow-matching objective and the jitted train step: loss goes down, one compilation, gradient
accumulation == the big batch, EMA, per-frame timesteps of first-frame conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wan22_jax.errors import ConfigError
from wan22_jax.samplers import shift_sigmas
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.objective import noisy_inputs, per_sample_keys, sample_sigmas
from wan22_jax.training.step import ema_update, init_state, make_train_step

from .conftest import make_batch, rel_err


def test_sigmas_follow_the_shifted_distribution_and_the_expert_range():
    cfg = TrainConfig(shift=5.0)
    s = np.asarray(sample_sigmas(jax.random.key(0), 20000, cfg))
    # P(sigma <= shift(u)) = u for a shifted uniform
    for u in (0.1, 0.5, 0.9):
        assert abs(np.mean(s <= shift_sigmas(u, 5.0)) - u) < 0.015
    high = np.asarray(sample_sigmas(jax.random.key(1), 5000, TrainConfig(shift=5.0, t_range=(0.875, 1.0))))
    low = np.asarray(sample_sigmas(jax.random.key(1), 5000, TrainConfig(shift=5.0, t_range=(0.0, 0.875))))
    assert high.min() >= 0.875 and low.max() <= 0.875
    ln = np.asarray(sample_sigmas(jax.random.key(2), 5000, TrainConfig(shift=1.0, t_sampling="logit_normal")))
    assert abs(np.median(ln) - 0.5) < 0.03 and ln.min() > 0 and ln.max() < 1


def test_first_frame_conditioning_keeps_frame_zero_clean_and_out_of_the_loss():
    cfg = TrainConfig(first_frame_prob=1.0)
    x0 = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 5, 2, 2)), jnp.float32)
    x_t, t, target, mask = noisy_inputs(per_sample_keys(jax.random.key(0), 3), x0, cfg)
    np.testing.assert_array_equal(np.asarray(x_t[:, :, 0]), np.asarray(x0[:, :, 0]))
    assert np.all(np.asarray(t[:, 0]) == 0) and np.all(np.asarray(t[:, 1:]) > 0)
    assert np.all(np.asarray(t[:, 1:]) == np.asarray(t[:, 1:2]))  # one t for the noisy frames
    np.testing.assert_array_equal(np.asarray(mask), np.tile([0, 1, 1, 1, 1], (3, 1)))
    # unconditioned: x_t = (1 - s) x0 + s noise with s = t / 1000, and the target is noise - x0
    x_t, t, target, mask = noisy_inputs(per_sample_keys(jax.random.key(0), 3), x0, TrainConfig())
    s = np.asarray(t[:, 0] / 1000)[:, None, None, None, None]
    np.testing.assert_allclose(np.asarray(x_t), (1 - s) * np.asarray(x0) + s * np.asarray(target + x0),
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(mask) == 1)


def test_loss_decreases_and_compiles_once(tiny_dit):
    graphdef, params = tiny_dit
    cfg = TrainConfig(lr=3e-3, warmup_steps=2, total_steps=30)
    step = make_train_step(graphdef, cfg)
    state = init_state(params, cfg)
    batch = make_batch(1, 4)
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert step.jitted._cache_size() == 1
    assert int(state["step"]) == 30 and int(state["data_position"]) == 30 * 4


def test_grad_accumulation_equals_the_big_batch(tiny_dit):
    graphdef, params = tiny_dit
    big = make_batch(1, 4, seed=3)
    split = jax.tree.map(lambda x: x.reshape(2, 2, *x.shape[2:]), big)
    base = dict(lr=1e-3, warmup_steps=0, total_steps=10, first_frame_prob=0.5)
    s1, m1 = make_train_step(graphdef, TrainConfig(**base))(init_state(params, TrainConfig(**base)), big)
    cfg2 = TrainConfig(**base, grad_accum=2)
    s2, m2 = make_train_step(graphdef, cfg2)(init_state(params, cfg2), split)
    assert abs(float(m1["loss"]) - float(m2["loss"])) <= 1e-6 * float(m1["loss"])
    assert abs(float(m1["grad_norm"]) - float(m2["grad_norm"])) <= 1e-5 * float(m1["grad_norm"])
    assert rel_err(s2["params"], s1["params"]) < 1e-6
    assert int(s1["data_position"]) == int(s2["data_position"]) == 4


def test_ema_update(tiny_dit):
    graphdef, params = tiny_dit
    cfg = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=5, ema_decay=0.9)
    state = init_state(params, cfg)
    old_ema = jax.tree.map(jnp.copy, state["ema"])
    new, _ = make_train_step(graphdef, cfg)(state, make_batch(1, 2))
    expect = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, old_ema, new["params"])
    assert rel_err(new["ema"], expect) < 1e-6
    assert rel_err(new["ema"], old_ema) > 0  # it moved
    one = {"w": jnp.ones(3)}
    np.testing.assert_allclose(ema_update({"w": jnp.zeros(3)}, one, 0.75)["w"], 0.25)


# slow (23 s): bf16 compute is also covered by tests/models/test_dit.py::test_bf16_compute_is_close_to_fp32
@pytest.mark.slow
def test_bf16_compute_keeps_fp32_master_weights():
    from flax import nnx

    from wan22_jax.models.dit import WanModel
    from .conftest import TINY_DIT
    graphdef, state = nnx.split(WanModel(TINY_DIT, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                         rngs=nnx.Rngs(0)))
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, total_steps=3, dtype="bfloat16", remat=True)
    new, m = make_train_step(graphdef, cfg)(init_state(nnx.to_pure_dict(state), cfg), make_batch(1, 2))
    assert np.isfinite(float(m["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new["params"]))


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="t_range"):
        TrainConfig(t_range=(0.9, 0.2))
    with pytest.raises(ConfigError, match="t_sampling"):
        TrainConfig(t_sampling="cosine")


def test_state_holds_only_what_is_asked_for(tiny_dit):
    graphdef, params = tiny_dit
    n = sum(x.size for x in jax.tree.leaves(params))
    lean = init_state(params, TrainConfig(moment_dtype="bf16"))
    assert "ema" not in lean  # ema_decay 0: no EMA copy
    mu_nu = [x for x in jax.tree.leaves(lean["opt_state"]) if x.size > 1]
    assert {x.dtype for x in mu_nu} == {jnp.dtype(jnp.bfloat16)} and sum(x.size for x in mu_nu) == 2 * n
    full = init_state(params, TrainConfig(ema_decay=0.9))
    assert "ema" in full and {x.dtype for x in jax.tree.leaves(full["opt_state"]) if x.size > 1} == {
        jnp.dtype(jnp.float32)}


# slow (11 s): an opt-in memory saving; the default suite keeps the fp32 optimizer and the bf16-compute checks
@pytest.mark.slow
def test_bf16_moments_follow_the_fp32_optimizer(tiny_dit):
    # the same steps with moments stored in bf16: the moments stay bf16, the params move the same way (an Adam
    # update is m / sqrt(v): bf16 rounding of both changes it by well under 1 %)
    graphdef, params = tiny_dit
    batch = make_batch(1, 2)
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(lr=1e-3, warmup_steps=0, total_steps=3, moment_dtype=dtype)
        step = make_train_step(graphdef, cfg)
        state = init_state(params, cfg)
        for _ in range(2):
            state, _ = step(state, batch)
        out[dtype] = state
    adam = out["bfloat16"]["opt_state"][1][0]
    assert adam.mu["head"]["head"]["kernel"].dtype == jnp.bfloat16
    assert adam.nu["blocks"]["ffn"]["0"]["kernel"].dtype == jnp.bfloat16
    moved = {k: jax.tree.map(lambda a, b: a - b, out[k]["params"], params) for k in out}
    assert rel_err(moved["bfloat16"], moved["float32"]) < 0.02
