"""Animate-14B model pieces against torch's own ops, batching, and the one-clear-error input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.animate.clip import bicubic_matrix, resize_bicubic
from wan22_jax.models.animate.face_blocks import CausalConv1d, FaceEncoder
from wan22_jax.models.animate.model_animate import ANIMATE_PRESETS, AnimateConfig, random_animate
from wan22_jax.models.animate.motion_encoder import Direction
from wan22_jax.ops import XLA

TINY = ANIMATE_PRESETS["tiny-animate"]


@pytest.mark.parametrize("h,w", [(48, 64), (240, 96), (7, 300)])
def test_bicubic_resize_matches_torch(h, w):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=(24, 24), mode="bicubic", align_corners=False).numpy()
    np.testing.assert_allclose(np.asarray(resize_bicubic(jnp.asarray(x), 24)), ref, atol=2e-6)
    assert np.allclose(bicubic_matrix(h, 24).sum(1), 1.0, atol=1e-6)  # every output is a weighted mean


def test_direction_basis_has_torch_qr_signs():
    d = Direction(16, 8, param_dtype=jnp.float32, rngs=None)
    w = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    d.weight[...] = jnp.asarray(w)
    q_ref, _ = torch.linalg.qr(torch.from_numpy(w) + 1e-8)
    np.testing.assert_allclose(np.asarray(d.basis()), q_ref.numpy(), atol=1e-5)
    a = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(d(jnp.asarray(a))), a @ q_ref.numpy().T, atol=1e-5)


@pytest.mark.parametrize("stride,t", [(1, 5), (2, 5), (2, 4)])
def test_causal_conv1d_matches_torch_replicate_padding(stride, t):
    conv = CausalConv1d(3, 4, 3, stride=stride, dtype=jnp.float32, param_dtype=jnp.float32,
                        kernels=XLA, rngs=None)
    x = np.random.default_rng(3).standard_normal((2, t, 3)).astype(np.float32)
    w = np.array(conv.kernel[...]).transpose(2, 1, 0)  # ours [k, I, O] -> torch [O, I, k]
    b = np.array(conv.bias[...])
    xt = F.pad(torch.from_numpy(x).transpose(1, 2), (2, 0), mode="replicate")
    ref = F.conv1d(xt, torch.from_numpy(w), torch.from_numpy(b), stride=stride).transpose(1, 2).numpy()
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), ref, atol=1e-5)


def test_face_encoder_frames():
    enc = FaceEncoder(16, 8, 32, 4, rngs=None)
    out = jax.eval_shape(enc, jax.ShapeDtypeStruct((2, 9, 16), jnp.float32))  # 9 face frames -> 5 -> 3 latent
    # frames, 4 heads + the padding token
    assert out.shape == (2, 3, 5, 32)


@pytest.fixture(scope="module")
def tiny_model():
    return random_animate(TINY, seed=0)


def _inputs(b=2, f=3, seed=0):
    rng = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
    return dict(x=n(b, 16, f, 4, 6), t=jnp.asarray([300.0, 900.0][:b]), clip_fea=n(b, 257, TINY.image_dim),
                context=n(b, 5, TINY.text_dim), y=n(b, 20, f, 4, 6), pose_latents=n(b, 16, f - 1, 4, 6),
                face_pixel_values=jnp.clip(n(b, 3, 4 * (f - 2) + 1, 16, 16), -1, 1))


def _call(model, inp):
    return model(inp["x"], inp["t"], inp["clip_fea"], inp["context"], y=inp["y"], pose_latents=inp["pose_latents"],
                 face_pixel_values=inp["face_pixel_values"])


@jax.jit
def _jitted(graphdef, state, inp):
    return _call(nnx.merge(graphdef, state), inp)


def _run(model, inp):
    return np.asarray(_jitted(*nnx.split(model), inp))


def test_batch_equals_per_sample(tiny_model):
    inp = _inputs()
    both = _run(tiny_model, inp)
    for i in range(2):
        one = _run(tiny_model, {k: v[i:i + 1] for k, v in inp.items()})
        np.testing.assert_allclose(both[i:i + 1], one, atol=1e-5 * np.abs(one).max())


def test_face_and_pose_reach_the_output(tiny_model):
    # one compiled batch: sample 0 as drawn, sample 1 with the face crops, pose latents or CLIP tokens of a
    # different draw (a rescaling would not do: the face encoder's LayerNorms nearly cancel it)
    inp, other = _inputs(b=1), _inputs(b=1, seed=1)
    for key in ("face_pixel_values", "pose_latents", "clip_fea"):
        pair = {k: jnp.concatenate([v, other[k] if k == key else v]) for k, v in inp.items()}
        out = _run(tiny_model, pair)
        changed, base = out[1], out[0]
        assert np.abs(changed - base).max() > 1e-4, key


@pytest.mark.parametrize("key,shape,match", [
    ("pose_latents", (1, 16, 3, 4, 6), r"pose_latents has shape \(1, 16, 3, 4, 6\); expected \(1, 16, 2, 4, 6\)"),
    ("face_pixel_values", (1, 3, 4, 16, 16), r"face_pixel_values has shape .*expected \(1, 3, 5, 16, 16\)"),
    ("clip_fea", (1, 256, 32), r"clip_fea has shape \(1, 256, 32\); expected \[B, 257, 32\]"),
    ("y", (1, 16, 3, 4, 6), r"y has shape \(1, 16, 3, 4, 6\); expected \(1, 20, 3, 4, 6\)"),
])
def test_bad_inputs_are_named(tiny_model, key, shape, match):
    inp = _inputs(b=1)
    inp[key] = jnp.zeros(shape)
    with pytest.raises(InputError, match=match):
        _call(tiny_model, inp)


def test_config_checks():
    with pytest.raises(ConfigError, match="multiple of 5"):
        dataclasses.replace(TINY, num_layers=7)
    with pytest.raises(ConfigError, match="motion_channels must list 3 widths"):
        dataclasses.replace(TINY, motion_channels=(8, 8))
    with pytest.raises(ConfigError, match="power of two"):
        AnimateConfig(motion_encoder_size=500)


def test_bf16_compute_runs_close_to_fp32(tiny_model):
    """The bf16 path (bf16 Linears and attention, fp32 norms / modulation / QR) compiles and stays near fp32;
    lax.cond's two branches (face block or not) must agree in dtype for this to trace at all."""
    inp = _inputs(b=1)
    ref = _run(tiny_model, inp)
    out = _run(random_animate(TINY, seed=0, dtype=jnp.bfloat16), inp)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.05
