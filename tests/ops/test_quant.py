"""Weight-only int8 / fp8 quantisation: per-channel rounding bounds, the quantised matmul equals the matmul with
the dequantised weight, a quantised model stays close to the original, and the pipeline's `quantized`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.cli import main as cli_main
from wan22_jax.errors import InputError
from wan22_jax.models.dit import DIT_PRESETS, random_dit
from wan22_jax.ops.matmul import matmul, quantized_matmul
from wan22_jax.ops.quant import dequantize_weight, quantize_module, quantize_weight, weight_bytes
from wan22_jax.presets import random_pipeline
from wan22_jax.video import read_video


def _weights(shape=(3, 64, 48), seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[..., 5] *= 40.0  # one loud output channel must not cost the others their precision
    w[..., 7] = 0.0  # an empty channel
    return jnp.asarray(w)


def test_int8_rounding_is_half_a_step_per_channel():
    w = _weights()
    q, scale = quantize_weight(w, "int8")
    assert q.dtype == jnp.int8 and scale.shape == (3, 48) and scale.dtype == jnp.float32
    amax = np.max(np.abs(np.asarray(w)), axis=-2)
    err = np.abs(np.asarray(dequantize_weight(q, scale)) - np.asarray(w))
    step = np.where(amax > 0, amax / 127, 1.0)
    assert np.all(err <= step[..., None, :] / 2 * (1 + 1e-6))
    assert np.all(np.asarray(dequantize_weight(q, scale))[..., 7] == 0)
    # per channel: the quiet channels keep a step 40x finer than the loud one's
    assert float(np.max(err[..., 0])) < float(np.max(err[..., 5])) / 10


def test_fp8_rounding_is_relative():
    w = _weights()
    q, scale = quantize_weight(w, "fp8")
    assert q.dtype == jnp.float8_e4m3fn
    back = np.asarray(dequantize_weight(q, scale))
    wn = np.asarray(w)
    amax = np.max(np.abs(wn), axis=-2, keepdims=True)
    normal = (np.abs(wn) >= amax * 2.0 ** -6 / 448) & (wn != 0)  # e4m3 normals after scaling
    rel = np.abs(back - wn)[normal] / np.abs(wn)[normal]
    assert float(rel.max()) <= 2.0 ** -4 * (1 + 1e-6)  # 3 mantissa bits: half an ulp is 2^-4 relative


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quantized_matmul_equals_matmul_with_dequantised_weight(mode, dtype):
    w = _weights((64, 48))
    q, scale = quantize_weight(w, mode)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 64)), dtype)
    got = quantized_matmul(x, q, scale)
    assert got.dtype == dtype
    want = matmul(x.astype(jnp.float32), dequantize_weight(q, scale))
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=0,
                               atol=tol * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("mode,bound", [("int8", 0.02), ("fp8", 0.1)])
def test_quantized_dit_is_close_and_smaller(mode, bound):
    model = random_dit(DIT_PRESETS["tiny-t2v"], seed=1)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 16, 2, 4, 6)), jnp.float32)
    t = jnp.array([500.0])
    ctx = jnp.asarray(rng.standard_normal((1, 5, 48)), jnp.float32)
    ref = model(x, t, ctx)
    qm = quantize_module(model, mode)
    out = qm(x, t, ctx)
    rel = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert 0 < rel < bound, rel
    # only the blocks' Linears: the time MLPs and the head keep fp32
    assert qm.blocks.self_attn.q.kernel[...].dtype == (jnp.int8 if mode == "int8" else jnp.float8_e4m3fn)
    assert qm.head.head.weight_scale is None and qm.head.head.kernel[...].dtype == jnp.float32
    assert model.blocks.self_attn.q.weight_scale is None  # the original is unchanged
    assert weight_bytes(qm) < weight_bytes(model)
    # jit over (graphdef, state) as the pipeline does
    g, s = nnx.split(qm)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda s: nnx.merge(g, s)(x, t, ctx))(s)), np.asarray(out),
                               rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(out))))


def test_bad_mode_and_nothing_selected():
    model = random_dit(DIT_PRESETS["tiny-t2v"], seed=1)
    with pytest.raises(InputError, match="weights='int4'"):
        quantize_module(model, "int4")
    with pytest.raises(InputError, match="no quantisable layer"):
        quantize_module(model, "int8", where=lambda path: False)


def test_pipeline_quantized(tmp_path):
    pipe = random_pipeline("ti2v-5B")
    kw = dict(prompt="a red circle", num_inference_steps=4, seed=0, output_type="latent", progress=False)
    ref = pipe(**kw).latents
    q = pipe.quantized("int8")
    assert q.experts["model"][1] is not pipe.experts["model"][1]
    out = q(**kw).latents
    assert 0 < float(np.max(np.abs(out - ref))) < 0.05 * float(np.max(np.abs(ref)))
    np.testing.assert_array_equal(pipe(**kw).latents, ref)  # the original pipeline is unchanged
    with pytest.raises(InputError, match="weights="):
        pipe.quantized("int4")
    with pytest.raises(InputError, match="quantised weights"):
        q.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_generate_with_quantised_weights_and_a_sampler_preset(tmp_path):
    # the two new `wan22 generate` flags together, in-process
    out = tmp_path / "v.mp4"
    code = cli_main(["generate", "--preset", "tiny-random", "--prompt", "a red circle", "--frames", "5",
                     "--weights", "fp8", "--sampler-preset", "lightning-4step", "--quiet", "--out", str(out)])
    assert code == 0 and read_video(out).shape == (5, 64, 64, 3)
