"""Spatial tiling: the blend weights, exactness of the tiling machinery, and the measured deviation of tiled
from untiled VAE runs.

Tiling cannot be exact for the real VAE (convs near a tile border see zero padding instead of the neighbour,
and the middle attention block attends within the tile), so exactness is tested where it must hold: on
spatially local functions, including the whole VAE graph with every 3x3 kernel cut to its centre tap and the
attention output projection zeroed (then each latent cell only depends on its own pixel block). The deviation
on a full random tiny VAE is measured in a slow test.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from test_vae import FAST_COMPILE, random_vae, rel_err
from wan22_jax.errors import ConfigError
from wan22_jax.models.vae_config import preset
from wan22_jax.models import vae as vae_api
from wan22_jax.models.vae import decode, encode
from wan22_jax.models.vae_tiling import Tiling, blend_weights, tile_starts, tiled
from wan22_jax.state import fill_state, flat_state


def _weight_map(length, tile, overlap, ratio):
    up, down = ratio
    t = min(tile, length)
    starts = tile_starts(length, tile, overlap)
    w = blend_weights(starts, t, ratio)
    total = np.zeros(length * up // down)
    for s, wi in zip(starts, w, strict=True):
        total[s * up // down: s * up // down + len(wi)] += wi
    return starts, w, total


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), tile=st.integers(1, 16), overlap=st.integers(0, 15), up=st.sampled_from([1, 2, 8]))
def test_tiles_cover_and_weights_blend_without_seams(n, tile, overlap, up):
    overlap = min(overlap, tile - 1)
    starts, w, total = _weight_map(n, tile, overlap, (up, 1))
    t = min(tile, n)
    assert starts[0] == 0 and starts[-1] + t == n and all(b > a for a, b in zip(starts, starts[1:]))
    assert all(b - a <= t - overlap or len(starts) == 1 for a, b in zip(starts, starts[1:]))
    assert np.all(total > 0)
    # where exactly two tiles overlap, their ramps are complementary: the weights already sum to one
    cover = np.zeros(n * up, int)
    for s in starts:
        cover[s * up:(s + t) * up] += 1
    np.testing.assert_allclose(total[cover <= 2], 1.0, rtol=1e-6)
    # a tile's weight fades out towards every cut edge (the last pixel before a cut gets at most one ramp step)
    for i, (s, wi) in enumerate(zip(starts, w, strict=True)):
        lead = (starts[i - 1] + t - s) * up if i > 0 else 0
        trail = (s + t - starts[i + 1]) * up if i + 1 < len(starts) else 0
        if lead:
            assert wi[0] <= 1.0 / lead + 1e-6
        if trail:
            assert wi[-1] <= 1.0 / trail + 1e-6


def test_tiling_config_is_checked():
    with pytest.raises(ConfigError, match="multiples of the VAE's spatial stride 16"):
        Tiling(tile=200, overlap=64).in_units(16, "decode")
    with pytest.raises(ConfigError, match="overlap=256 must be in"):
        Tiling(tile=256, overlap=256).in_units(16, "decode")


@pytest.mark.parametrize("ratio", [(4, 1), (1, 4)])
def test_tiling_a_local_function_is_exact(ratio):
    """Per-cell functions (upsampling like decode, downsampling like encode) are reproduced exactly."""
    up, down = ratio
    w = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)

    def fn(x):  # [B, T, H, W, 3] -> [B, T, H*up/down, W*up/down, 5]
        if up > 1:
            x = jnp.repeat(jnp.repeat(x, up, axis=2), up, axis=3)
        else:
            b, t, h, wd, c = x.shape
            x = x.reshape(b, t, h // down, down, wd // down, down, c).mean(axis=(3, 5))
        return jnp.tanh(x @ w)

    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 2, 40, 56, 3)), jnp.float32)
    ours = jax.jit(functools.partial(tiled, fn, tile=16, overlap=8, ratio=ratio))(x)
    assert ours.shape == fn(x).shape
    np.testing.assert_allclose(np.asarray(ours), np.asarray(fn(x)), rtol=0, atol=2e-6)


def _local_vae():
    """A small Wan2.2 VAE (one residual block per stage, for compile time) with every spatial 3x3 kernel cut to
    its centre tap and the attention output zeroed."""
    cfg = dataclasses.replace(preset("tiny2.2"), num_res_blocks=1)
    graphdef, state = vae_api.random_vae(cfg, seed=3)
    out = {}
    for path, v in flat_state(state).items():
        v = np.array(v)
        if path.endswith("kernel") and v.ndim >= 4 and v.shape[-3] == 3:  # [..., kh, kw, I, O]
            keep = np.zeros_like(v)
            keep[..., 1, 1, :, :] = v[..., 1, 1, :, :]
            v = keep
        if ".middle.1.proj." in path:
            v = np.zeros_like(v)
        out[path] = jnp.asarray(v)
    return graphdef, fill_state(state, out)


@functools.partial(jax.jit, static_argnums=(0, 3, 4), compiler_options=FAST_COMPILE)
def _run(graphdef, state, x, direction, tiling):
    vae = nnx.merge(graphdef, state)
    s = vae.config.spatial_stride
    fn = vae.encode_frames if direction == "encode" else vae.decode_frames
    if tiling is not None:
        tile, overlap = tiling.in_units(s, direction)
        if direction == "encode":
            fn = functools.partial(tiled, fn, tile=tile, overlap=overlap, ratio=(1, s))
        else:
            fn = functools.partial(tiled, fn, tile=tile // s, overlap=overlap // s, ratio=(s, 1))
    return fn(x)


def test_tiling_the_local_vae_is_exact():
    """The whole tiled pipeline (tile placement in latent and pixel units, blending, the chunked causal loop
    per tile) reproduces the untiled run when the model itself is spatially local."""
    graphdef, state = _local_vae()
    s = preset("tiny2.2").spatial_stride
    tiling = Tiling(tile=4 * s, overlap=2 * s)
    z = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 7, 9, 48)), jnp.float32)
    video = _run(graphdef, state, z, "decode", None)
    assert rel_err(_run(graphdef, state, z, "decode", tiling), video) < 1e-5
    video = jnp.clip(video, -1, 1)
    assert rel_err(_run(graphdef, state, video, "encode", tiling), _run(graphdef, state, video, "encode", None)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny2.1", "tiny2.2"])
def test_tiled_vae_deviation_is_bounded(name):
    """Measured on random tiny VAEs (seed 1, 2 latent frames of 24x24 cells, tiles of 16 cells overlapping by 8,
    i.e. 128/64 px for 2.1 and 256/128 px for 2.2); at the time of writing, max|d|/max|ref| (mean|d|/mean|ref|):
    2.1 decode 0.86 (0.10), encode 0.07 (0.036); 2.2 decode 1.02 (0.15), encode 0.11 (0.036). Random weights
    make these nets chaotic with a receptive field wider than the whole frame, so the numbers are far worse
    than for a trained VAE, whose tiles differ in the last few 8-bit levels. The bounds catch a misplaced tile
    (mean error ~1)."""
    graphdef, state = random_vae(name, seed=1)
    s = preset(name).spatial_stride
    tiling = Tiling(tile=16 * s, overlap=8 * s)
    z = np.random.default_rng(0).standard_normal((1, preset(name).z_dim, 2, 24, 24)).astype(np.float32)
    full = np.asarray(decode(graphdef, state, z))
    ours = np.asarray(decode(graphdef, state, z, tiling=tiling))
    assert np.mean(np.abs(ours - full)) / np.mean(np.abs(full)) < 0.25
    mu = np.asarray(encode(graphdef, state, full))
    tiled_mu = np.asarray(encode(graphdef, state, full, tiling=tiling))
    assert rel_err(tiled_mu, mu) < 0.2
    assert np.mean(np.abs(tiled_mu - mu)) / np.mean(np.abs(mu)) < 0.06
