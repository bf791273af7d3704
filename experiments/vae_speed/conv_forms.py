"""Micro-benchmark of formulations of the causal 3x3x3 conv (valid in time, 'same' in space), channels-last:
  conv3d  : one lax.conv_general_dilated over [B, T+2, H, W, C] with a [3, 3, 3, C, O] kernel
  sum2d   : sum over the 3 taps of 2-D convs on shifted frames (time folded into batch)
  stack2d : the 3 shifted frames concatenated on channels, one 2-D conv with a [3, 3, 3C, O] kernel
    python experiments/vae_speed/conv_forms.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN3 = ("NDHWC", "DHWIO", "NDHWC")
DN2 = ("NHWC", "HWIO", "NHWC")


def conv3d(x, k):
    return lax.conv_general_dilated(x, k, (1, 1, 1), ((0, 0), (1, 1), (1, 1)), dimension_numbers=DN3)


def sum2d(x, k):
    b, tp, h, w, c = x.shape
    t = tp - 2
    out = 0
    for i in range(3):
        xi = x[:, i:i + t].reshape(b * t, h, w, c)
        out = out + lax.conv_general_dilated(xi, k[i], (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN2)
    return out.reshape(b, t, h, w, -1)


def stack2d(x, k):
    b, tp, h, w, c = x.shape
    t = tp - 2
    xs = jnp.concatenate([x[:, i:i + t] for i in range(3)], axis=-1).reshape(b * t, h, w, 3 * c)
    ks = k.transpose(1, 2, 0, 3, 4).reshape(3, 3, 3 * c, -1)  # [kh, kw, (kt, I), O]
    out = lax.conv_general_dilated(xs, ks, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN2)
    return out.reshape(b, t, h, w, -1)


def bench(fn, *args, n=3):
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return min(ts)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    for (t, h, c, o) in [(4, 64, 256, 256), (4, 32, 512, 512), (2, 16, 1024, 1024), (1, 8, 1024, 1024)]:
        x = jnp.asarray(rng.standard_normal((1, t + 2, h, h, c)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((3, 3, 3, c, o)) / np.sqrt(27 * c), jnp.float32)
        ref = conv3d(x, k)
        flops = 2 * t * h * h * 27 * c * o
        line = f"T={t} H=W={h} C={c}->{o}:"
        for name, fn in (("conv3d", conv3d), ("sum2d", sum2d), ("stack2d", stack2d)):
            err = float(jnp.max(jnp.abs(fn(x, k) - ref)) / jnp.max(jnp.abs(ref)))
            s = bench(fn, x, k)
            line += f"  {name} {s * 1e3:7.1f} ms ({flops / s / 1e9:5.1f} GFLOP/s, err {err:.1e})"
        print(line, flush=True)
