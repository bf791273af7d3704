"""The sinusoidal timestep embedding (official `sinusoidal_embedding_1d`), accurate to fp32 rounding.

The official code evaluates cos/sin(t * 10000^(-k/half)) in float64; t reaches 1000, where a plain fp32 product
already has ~6e-5 absolute phase error. Without float64 on device we carry the angle as an unevaluated sum of two
fp32 numbers: the frequencies are split on the host into hi + lo parts, t * hi is formed exactly with Dekker's
two-product, and the angle is reduced modulo 2*pi with a two-part 2*pi. The reduced angle is then accurate to
~1e-7, so cos/sin match the float64 values to fp32 rounding, for any traced t (training draws t on device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# 2*pi = _TWO_PI_HI + _TWO_PI_LO, with _TWO_PI_HI holding few significant bits so that k * _TWO_PI_HI is exact
# in fp32 for every integer k this module can see (|k| < 2**12, i.e. |t| up to ~25,000).
_TWO_PI_HI = np.float32(6.28125)
_TWO_PI_LO = np.float32(2 * np.pi - 6.28125)


def _split(a):
    """Veltkamp split of fp32 a into hi + lo, each with at most 12 significant bits."""
    c = a * np.float32(4097.0)
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a, b):
    """p, e with p = fl(a*b) and p + e = a*b exactly (Dekker, no FMA needed)."""
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, e


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """[...] timesteps -> [..., dim] embedding, cos half first then sin half, in fp32."""
    half = dim // 2
    freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
    f_hi = freqs.astype(np.float32)
    f_lo = (freqs - f_hi.astype(np.float64)).astype(np.float32)
    t = jnp.asarray(t, jnp.float32)[..., None]
    p, e = _two_prod(t, jnp.asarray(f_hi))
    e = e + t * jnp.asarray(f_lo)
    k = jnp.round(p / np.float32(2 * np.pi))
    r = ((p - k * _TWO_PI_HI) - k * _TWO_PI_LO) + e
    return jnp.concatenate([jnp.cos(r), jnp.sin(r)], axis=-1)
