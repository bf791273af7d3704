"""RoPE tables and the timestep sinusoid against float64 numpy transcriptions of the official formulas."""

import numpy as np
import pytest

from wan22_jax.models.rope import apply_rope, axis_pairs, rope_tables
from wan22_jax.models.time_embedding import sinusoidal_embedding


def _official_rope_angles(grid, d):
    """Angles [L, d/2] as the official rope_params/rope_apply build them, in float64."""
    c = d // 2
    splits = [c - 2 * (c // 3), c // 3, c // 3]
    sub = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]  # real sub-dims given to rope_params
    tables = [np.outer(np.arange(1024), 1.0 / np.power(10000, np.arange(0, s, 2, dtype=np.float64) / s))
              for s in sub]
    assert [t.shape[1] for t in tables] == splits
    f, h, w = grid
    ang = np.concatenate([
        np.broadcast_to(tables[0][:f, None, None], (f, h, w, splits[0])),
        np.broadcast_to(tables[1][None, :h, None], (f, h, w, splits[1])),
        np.broadcast_to(tables[2][None, None, :w], (f, h, w, splits[2])),
    ], axis=-1)
    return ang.reshape(f * h * w, c)


@pytest.mark.parametrize("d,pairs", [(128, (22, 21, 21)), (16, (4, 2, 2)), (12, (2, 2, 2)), (20, (4, 3, 3))])
def test_axis_split(d, pairs):
    # the official rope_apply: freqs.split([c - 2 * (c // 3), c // 3, c // 3]) with c = d // 2
    assert axis_pairs(d) == pairs


@pytest.mark.parametrize("grid,d", [((3, 4, 4), 16), ((21, 45, 80), 128), ((1, 1, 1), 128)])
def test_rope_tables_match_float64(grid, d):
    cos, sin = rope_tables(grid, d)
    ang = _official_rope_angles(grid, d)
    np.testing.assert_allclose(np.asarray(cos), np.cos(ang), atol=1e-7, rtol=0)
    np.testing.assert_allclose(np.asarray(sin), np.sin(ang), atol=1e-7, rtol=0)


def test_apply_rope_is_complex_multiply_on_interleaved_pairs():
    rng = np.random.default_rng(0)
    grid, d = (2, 3, 4), 16
    x = rng.standard_normal((2, 24, 3, d)).astype(np.float32)
    cos, sin = rope_tables(grid, d)
    ours = np.asarray(apply_rope(x, cos, sin))
    z = x.astype(np.float64).reshape(2, 24, 3, d // 2, 2)
    z = z[..., 0] + 1j * z[..., 1]
    ang = _official_rope_angles(grid, d)[None, :, None, :]
    rot = z * np.exp(1j * ang)
    ref = np.stack([rot.real, rot.imag], -1).reshape(x.shape)
    assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) < 1e-6
    # a rotation keeps the norm of every pair
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def _official_sinusoid(t, dim):
    half = dim // 2
    ang = np.outer(np.asarray(t, np.float64), np.power(10000.0, -np.arange(half) / half))
    return np.concatenate([np.cos(ang), np.sin(ang)], axis=1)


def test_sinusoid_matches_float64_to_fp32_rounding():
    t = np.concatenate([np.arange(0, 1001), np.random.default_rng(1).uniform(0, 1000, 3000)]).astype(np.float32)
    err = np.max(np.abs(np.asarray(sinusoidal_embedding(t, 256)) - _official_sinusoid(t, 256)))
    assert err < 5e-7, err  # a plain fp32 angle product is off by ~6e-5 at t ~ 1000


def test_sinusoid_cos_first_and_shape():
    e = np.asarray(sinusoidal_embedding(np.zeros((2, 3), np.float32), 32))
    assert e.shape == (2, 3, 32)
    np.testing.assert_array_equal(e[..., :16], 1.0)
    np.testing.assert_array_equal(e[..., 16:], 0.0)
