"""The chunked causal VAE vs an independent whole-sequence formulation, on frame counts and sizes the reference
cases do not cover; input validation.

The whole-sequence reference below transcribes the docs' "[derived] whole-sequence equivalents" (section 6.2):
every causal conv sees the whole clip with 2 zero frames in front, downsample3d is `cat(x[:1], conv_s2(x))`,
upsample3d is `cat(x[:1], interleave(causal_conv(x[1:])))`, AvgDown3D pads the whole clip at the front and
DupUp3D drops the first ft-1 frames of the whole clip. It shares only the per-frame layers (norms, 2-D convs,
attention) with the model; the chunking, caches and first-chunk rules are what is under test.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.errors import InputError
from wan22_jax.models import vae as vae_api
from wan22_jax.models import vae22
from wan22_jax.models.vae import build_vae, decode, encode
from wan22_jax.models.vae_config import denormalize_latent, normalize_latent, preset
from wan22_jax.models.vae_layers import (
    AttentionBlock,
    CausalConv3d,
    Resample,
    ResidualBlock,
)
from wan22_jax.ops import Kernels, with_kernels
from wan22_jax.state import flat_state
from wan22_jax.verify import relative_error as rel_err


# ----------------------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def random_vae(name: str, seed: int = 0):
    """A tiny preset with random weights like the reference cases' (no block is an identity by accident)."""
    return vae_api.random_vae(preset(name), seed)


def _causal(conv: CausalConv3d, x):
    return conv.valid(jnp.pad(x, ((0, 0), (conv.context, 0), (0, 0), (0, 0), (0, 0))))


def _whole(layer, x):
    if isinstance(layer, ResidualBlock):
        h = x if layer.shortcut is None else layer.shortcut(x)
        y = _causal(layer.residual[2], jax.nn.silu(layer.residual[0](x)))
        return _causal(layer.residual[6], jax.nn.silu(layer.residual[3](y))) + h
    if isinstance(layer, AttentionBlock):
        return layer(x)[0]
    if isinstance(layer, Resample):
        if layer.mode == "upsample3d":
            y = _causal(layer.time_conv, x[:, 1:])
            b, t, h, w, c2 = y.shape
            y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c2 // 2)
            x = jnp.concatenate([x[:, :1], y], axis=1)
        x = layer._spatial(x)
        if layer.mode == "downsample3d":
            x = jnp.concatenate([x[:, :1], layer.time_conv.valid(x)], axis=1)
        return x
    if isinstance(layer, vae22.DownResidualBlock):
        return _seq(layer.downsamples, x) + vae22.avg_down(x, layer.out_dim, layer.ft, layer.fs)
    if isinstance(layer, vae22.UpResidualBlock):
        y = _seq(layer.upsamples, x)
        return y + vae22.dup_up(x, layer.out_dim, layer.ft, 2, first=True) if layer.up else y
    raise TypeError(type(layer))


def _seq(layers, x):
    for layer in layers:
        x = _whole(layer, x)
    return x


def _coder(m, x, body):
    x = _causal(m.conv1, x)
    for name in body:
        x = _seq(getattr(m, name), x)
    return _causal(m.head[2], jax.nn.silu(m.head[0](x)))


# Tests compile at LLVM -O0: XLA CPU compiles 2-3x faster, and the tiny models run in milliseconds anyway.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def chunked_encode(graphdef, state, video):  # [B, 3, T, H, W] -> raw mu [B, z, T', h, w], per sample
    vae = nnx.merge(graphdef, state)
    mu = vae_api._per_sample(vae.encode_frames, jnp.moveaxis(video, 1, -1), slice_batch=True)
    return jnp.moveaxis(mu, -1, 1)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def chunked_decode(graphdef, state, z):  # raw latent [B, z, T', h, w] -> unclamped video
    vae = nnx.merge(graphdef, state)
    return jnp.moveaxis(vae.decode_frames(jnp.moveaxis(z, 1, -1)), -1, 1)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def whole_encode(graphdef, state, video):  # [B, 3, T, H, W] -> raw mu [B, z, T', h, w]
    vae = nnx.merge(graphdef, state)
    x = vae.patchify(jnp.moveaxis(video, 1, -1))
    mu = vae.conv1(_coder(vae.encoder, x, ("downsamples", "middle")))[..., : vae.config.z_dim]
    return jnp.moveaxis(mu, -1, 1)


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def whole_decode(graphdef, state, z):  # raw latent [B, z, T', h, w] -> unclamped video
    vae = nnx.merge(graphdef, state)
    x = vae.conv2(jnp.moveaxis(z, 1, -1))
    return jnp.moveaxis(vae.unpatchify(_coder(vae.decoder, x, ("middle", "upsamples"))), -1, 1)


# ----------------------------------------------------------------------------------------------- tests
# Each distinct (model, shape) costs an XLA compile, so the fast suite compares 13 frames (three scanned
# chunks; encode at batch 2, sliced per sample, vs the batched reference) with the whole-sequence reference,
# and checks the single-chunk path (1 frame, no scan) by causality against the first frame of that reference;
# 5 frames (one scanned chunk) is marked slow. The public encode/decode wrappers (normalisation, clamp, layout)
# run in the reference cases (tests/test_reference_cases.py).
VERSIONS = ["tiny2.1", "tiny2.2"]


def _video(name, frames, batch=1, seed=0):
    s = preset(name).spatial_stride
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, frames, 2 * s, 3 * s)).astype(np.float32)


def _latent(name, frames, seed=0):
    cfg = preset(name)
    return np.random.default_rng(seed).standard_normal((1, cfg.z_dim, frames, 3, 2)).astype(np.float32)


@pytest.mark.parametrize("name", VERSIONS)
def test_encode_matches_whole_sequence(name):
    graphdef, state = random_vae(name, seed=1)
    video = _video(name, 13, batch=2)
    ours = chunked_encode(graphdef, state, video)
    ref = np.asarray(whole_encode(graphdef, state, video))
    assert ours.shape == (2, preset(name).z_dim, 4, 2, 3)
    assert rel_err(ours, ref) < 1e-5
    # a causal encoder's first latent frame only sees frame 0
    first = chunked_encode(graphdef, state, video[:, :, :1])
    assert rel_err(first, ref[:, :, :1]) < 1e-5


@pytest.mark.parametrize("name", VERSIONS)
def test_decode_matches_whole_sequence(name):
    graphdef, state = random_vae(name, seed=1)
    z = _latent(name, 4)
    ours = np.asarray(chunked_decode(graphdef, state, z))
    ref = np.asarray(whole_decode(graphdef, state, z))
    s = preset(name).spatial_stride
    assert ours.shape == (1, 3, 13, 3 * s, 2 * s)
    assert rel_err(ours, ref) < 1e-5
    first = chunked_decode(graphdef, state, z[:, :, :1])  # first chunk alone: no scan, 1 frame
    assert first.shape == (1, 3, 1, 3 * s, 2 * s)
    assert rel_err(first, ref[:, :, :1]) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", VERSIONS)
def test_one_scanned_chunk_matches_whole_sequence(name):
    graphdef, state = random_vae(name, seed=2)
    video = _video(name, 5)
    assert rel_err(chunked_encode(graphdef, state, video), whole_encode(graphdef, state, video)) < 1e-5
    z = _latent(name, 2)
    assert rel_err(chunked_decode(graphdef, state, z), whole_decode(graphdef, state, z)) < 1e-5


@pytest.mark.parametrize("name", VERSIONS)
def test_normalisation_is_the_official_formula(name):
    """encode: (mu - mean) * (1/std); decode: z / (1/std) + mean, with the fp32 reciprocal, bit for bit."""
    cfg = preset(name)
    mean, std = (np.asarray(v, np.float32) for v in cfg.latent_stats())
    inv = np.float32(1) / std
    x = (3 * np.random.default_rng(0).standard_normal((4, 5, cfg.z_dim))).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(normalize_latent, static_argnums=1)(x, cfg)),
                                  (x - mean) * inv)
    np.testing.assert_array_equal(np.asarray(jax.jit(denormalize_latent, static_argnums=1)(x, cfg)),
                                  x / inv + mean)


@pytest.mark.parametrize("frames", [2, 4, 6, 8, 10])
def test_frame_count_not_1_plus_4k_is_rejected(frames):
    graphdef, state = random_vae("tiny2.2")
    with pytest.raises(InputError, match=f"video has {frames} frames"):
        encode(graphdef, state, np.zeros((1, 3, frames, 16, 16), np.float32))


@pytest.mark.parametrize("name", VERSIONS)
def test_bad_shapes_are_rejected(name):
    graphdef, state = random_vae(name)
    cfg = preset(name)
    s = cfg.spatial_stride
    with pytest.raises(InputError, match=f"{s + 4}x{s}.*stride {s}"):
        encode(graphdef, state, np.zeros((1, 3, 1, s + 4, s), np.float32))
    with pytest.raises(InputError, match=r"\[B, 3, T, H, W\]"):
        encode(graphdef, state, np.zeros((1, 4, 1, s, s), np.float32))
    with pytest.raises(InputError, match=f"\\[B, {cfg.z_dim}, T, h, w\\]"):
        decode(graphdef, state, np.zeros((1, cfg.z_dim + 1, 1, 2, 2), np.float32))


def test_real_presets_build_abstractly_with_official_parameter_counts():
    """Full-size models build without memory; parameter counts are those of the official manifests."""
    for name, count in (("wan2.1", 126_892_531), ("wan2.2", 704_688_668)):
        model = nnx.eval_shape(lambda: build_vae(preset(name)))
        n = sum(int(np.prod(v.shape)) for v in flat_state(nnx.state(model)).values())
        assert n == count, name


# slow (7-13 s each, suite time): the forms are opt-in ops-level rewrites, checked op by op (forward, gradients,
# strides) in tests/ops/test_ops.py and tests/cpu_kernels in the default suite; these whole-VAE runs are the slow proof
@pytest.mark.slow
@pytest.mark.parametrize("name", VERSIONS)
@pytest.mark.parametrize("conv", ["im2col", "taps", "dots"])
def test_other_convolution_forms_match_xla(name, conv):
    # the training-speed (im2col), CPU-speed (taps) and TPU-compile-time (dots) forms are the same sums in another
    # order; 32x32 frames so that "taps" takes its per-tap path (ops.conv.TAPS_MIN_PIXELS). Encode runs the
    # strided (downsampling) convolutions, decode the temporal and spatial upsampling ones.
    graphdef, state = random_vae(name)
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (1, 5, 32, 32, 3)), jnp.float32)

    def run(graphdef, state, x):
        vae = nnx.merge(graphdef, state)
        z = vae.encode_frames(x)
        return z, vae.decode_frames(z)

    run = jax.jit(run, static_argnums=0)
    z_ref, rec_ref = run(graphdef, state, x)
    other = nnx.split(with_kernels(nnx.merge(graphdef, state), Kernels(conv=conv)))[0]
    assert other != graphdef  # the choice is part of what jit compiles for
    z, rec = run(other, state, x)
    assert rel_err(z, z_ref) < 1e-5 and rel_err(rec, rec_ref) < 1e-5
    assert rel_err(z, z_ref) > 0 or conv == "taps"  # im2col / dots really ran: another rounding order
