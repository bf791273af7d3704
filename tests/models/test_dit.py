"""The DiT on cases no shipped reference has: other grids, batch 2, per-frame/per-token timesteps, i2v/ti2v."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dit_reference import official_forward, official_state_dict
from flax import nnx

from wan22_jax.convert.dit import OFFICIAL, convert_dit
from wan22_jax.errors import InputError
from wan22_jax.io.tensor_source import DictSource
from wan22_jax.models.dit import DIT_PRESETS, WanModel, padding_key_bias
from wan22_jax.ops import Kernels, with_kernels
from wan22_jax.verify import relative_error as rel_err


def _model(cfg, seed=0, **kw):
    sd = official_state_dict(cfg, np.random.default_rng(seed))
    graphdef, state = convert_dit(DictSource(sd), cfg, OFFICIAL, **kw)
    return nnx.merge(graphdef, state), sd


@pytest.mark.parametrize("preset,grid,batch", [
    ("tiny-t2v", (5, 6, 10), 2),
    ("tiny-i2v", (2, 4, 6), 2),
    ("tiny-ti2v", (3, 2, 4), 1),
])
def test_dit_matches_float64_transcription_of_official(preset, grid, batch):
    cfg = dataclasses.replace(DIT_PRESETS[preset], num_layers=3)
    model, sd = _model(cfg)
    rng = np.random.default_rng(1)
    F, H, W = grid
    c_x = 16 if cfg.model_type == "i2v" else cfg.in_dim
    x = rng.standard_normal((batch, c_x, F, H, W)).astype(np.float32)
    y = rng.standard_normal((batch, 20, F, H, W)).astype(np.float32) if cfg.model_type == "i2v" else None
    t = np.array([999.0, 417.0][:batch], np.float32)
    ctx = rng.standard_normal((batch, 11, cfg.text_dim)).astype(np.float32)
    ctx[1:, 7:] = 0  # sample 2 has a shorter prompt: trailing zero rows are the padding
    ours = np.asarray(jax.jit(lambda m, *a: m(*a[:3], y=a[3]))(model, x, t, ctx, y))
    for b in range(batch):
        ref = official_forward(cfg, sd, x[b], t[b], ctx[b], None if y is None else y[b])
        assert rel_err(ours[b], ref) < 1e-5, (b, rel_err(ours[b], ref))


def test_timestep_layouts_agree_and_match_per_token_reference():
    cfg = dataclasses.replace(DIT_PRESETS["tiny-ti2v"], num_layers=2)
    model, sd = _model(cfg, seed=3)
    rng = np.random.default_rng(2)
    F, H, W = 3, 4, 4
    x = rng.standard_normal((1, 48, F, H, W)).astype(np.float32)
    ctx = rng.standard_normal((1, 5, cfg.text_dim)).astype(np.float32)
    per_frame = np.array([[0.0, 731.0, 731.0]], np.float32)  # ti2v: first latent frame is clean
    per_token = np.repeat(per_frame, (H // 2) * (W // 2), axis=1)
    a = np.asarray(model(x, per_frame, ctx))
    b = np.asarray(model(x, per_token, ctx))
    assert rel_err(a, b) < 1e-6
    ref = official_forward(cfg, sd, x[0], per_token[0], ctx[0])
    assert rel_err(a[0], ref) < 1e-5
    # scalar t equals a per-frame t with equal entries
    c = np.asarray(model(x, np.array([731.0], np.float32), ctx))
    d = np.asarray(model(x, np.full((1, F), 731.0, np.float32), ctx))
    np.testing.assert_allclose(c, d, rtol=0, atol=1e-6)


def _small_inputs(frames: int):
    """(x [1, 16, frames, 4, 4], t [1], context [1, 9, 48]) for the tiny t2v preset."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, frames, 4, 4)).astype(np.float32)
    return x, np.array([500.0], np.float32), rng.standard_normal((1, 9, 48)).astype(np.float32)


def test_precomputed_context_kv_equals_direct_context():
    model, _ = _model(DIT_PRESETS["tiny-t2v"])
    x, t, ctx = _small_inputs(1)
    np.testing.assert_array_equal(np.asarray(model(x, t, ctx)),
                                  np.asarray(model(x, t, context_kv=model.encode_context(jnp.asarray(ctx)))))


def test_one_padding_row_equals_the_zero_padded_context():
    """A short prompt's text K/V hold one padding row (counted text_len - Lc times), not text_len - Lc."""
    model, _ = _model(DIT_PRESETS["tiny-t2v"])
    x, t, ctx = _small_inputs(2)  # 9 of text_len 16 rows
    k, v = model.encode_context(jnp.asarray(ctx))
    assert k.shape[2] == v.shape[2] == 10
    full = np.pad(ctx, ((0, 0), (0, 7), (0, 0)))
    assert model.encode_context(jnp.asarray(full))[0].shape[2] == 16
    assert rel_err(model(x, t, ctx), np.asarray(model(x, t, full), np.float64)) < 1e-6
    assert padding_key_bias(16, 16) is None and float(padding_key_bias(10, 16)[-1]) == pytest.approx(np.log(7))


def test_splash_attention_gives_the_xla_forward():
    """The TPU kernel path (interpreted on CPU) through a whole DiT, with padded self-attention keys."""
    model, _ = _model(DIT_PRESETS["tiny-t2v"])
    x, t, ctx = _small_inputs(2)
    mask = np.arange(2 * 2 * 2)[None] < 6
    ref = np.asarray(model(x, t, ctx, kv_mask=mask))
    splash = with_kernels(model, Kernels(attention="splash"))
    assert rel_err(splash(x, t, ctx, kv_mask=mask), ref) < 1e-5


def test_padded_tokens_are_ignored_with_kv_mask():
    """Sequence parallelism pads tokens; masked keys must not change the real tokens' output."""
    model, _ = _model(DIT_PRESETS["tiny-t2v"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 2, 4, 4)).astype(np.float32)
    x_pad = np.concatenate([x, rng.standard_normal((1, 16, 1, 4, 4)).astype(np.float32)], axis=2)
    ctx = rng.standard_normal((1, 9, 48)).astype(np.float32)
    t = np.array([500.0], np.float32)
    n_real = 2 * 2 * 2
    mask = np.arange(3 * 2 * 2)[None] < n_real
    full = np.asarray(model(x_pad, t, ctx, kv_mask=mask))[:, :, :2]
    ref = np.asarray(model(x, t, ctx))
    # the padded frame only changes RoPE positions of padding, never the real tokens
    assert rel_err(full, ref) < 1e-6


def test_bf16_compute_is_close_to_fp32():
    cfg = DIT_PRESETS["tiny-t2v"]
    m32, sd = _model(cfg)
    m16, _ = _model(cfg, dtype=jnp.bfloat16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 2, 4, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 9, 48)).astype(np.float32)
    t = np.array([300.0], np.float32)
    a, b = np.asarray(m32(x, t, ctx)), np.asarray(m16(x, t, ctx))
    assert b.dtype == np.float32
    assert 1e-4 < rel_err(b, a) < 5e-2  # bf16 really is used, and stays close


@pytest.mark.parametrize("bad", ["channels", "grid", "t"])
def test_bad_inputs_are_named(bad):
    model = WanModel(DIT_PRESETS["tiny-t2v"])
    x = np.zeros((1, 16, 2, 4, 4), np.float32)
    t = np.array([1.0], np.float32)
    ctx = np.zeros((1, 3, 48), np.float32)
    if bad == "channels":
        x = np.zeros((1, 15, 2, 4, 4), np.float32)
    elif bad == "grid":
        x = np.zeros((1, 16, 2, 5, 4), np.float32)
    else:
        t = np.zeros((1, 7), np.float32)
    with pytest.raises(InputError, match={"channels": "expected", "grid": "divisible", "t": "per token"}[bad]):
        model(x, t, ctx)


def test_patchify_unpatchify_round_trip():
    cfg = DIT_PRESETS["tiny-ti2v"]
    model = WanModel(cfg)
    x = np.random.default_rng(0).standard_normal((2, 48, 3, 6, 8)).astype(np.float32)
    from einops import rearrange
    tokens = rearrange(x, "b c f (h q) (w r) -> b (f h w) (q r c)", q=2, r=2)
    np.testing.assert_array_equal(np.asarray(model.unpatchify(jnp.asarray(tokens), (3, 3, 4))), x)


def test_intermediates_are_the_block_outputs():
    model, _ = _model(DIT_PRESETS["tiny-t2v"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 1, 4, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 5, 48)).astype(np.float32)
    t = np.array([400.0], np.float32)
    out, inter = model(x, t, ctx, return_intermediates=True)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(model(x, t, ctx)))
    assert inter["blocks"].shape == (2, 1, 4, 64) and inter["patch_embedding"].shape == (1, 4, 64)
    # the head applied to the last block output gives the model output
    head = np.asarray(model.unpatchify(model.head(inter["blocks"][-1], inter["time_embedding"]), (1, 2, 2)))
    np.testing.assert_allclose(head, np.asarray(out), rtol=0, atol=1e-6)


def test_remat_gives_the_same_gradients():
    model, _ = _model(DIT_PRESETS["tiny-t2v"])
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 16, 2, 4, 4)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((1, 5, 48)), jnp.float32)

    def loss(s, remat):
        return jnp.mean(nnx.merge(graphdef, s)(x, jnp.array([300.0]), ctx, remat=remat) ** 2)

    g0 = jax.grad(loss)(state, False)
    g1 = jax.grad(loss)(state, True)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
