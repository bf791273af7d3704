"""A/B of the causal-conv formulation inside the full Wan2.2 decoder (real widths, random weights), same process,
alternating runs, min of N (the shared CPU is noisy). The library's `vae_blocks.conv3d` is swapped at trace time.
    python experiments/vae_speed/forms_decode.py --latent-frames 2 --size 8 --repeats 2
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from wan22_jax.models import vae_blocks
from wan22_jax.models.vae_config import preset
from wan22_jax.models.vae import _decode, random_vae

ORIGINAL = vae_blocks.conv3d


def conv3d_sum2d(x, kernel, *, stride_t=1, dtype=jnp.float32):
    kt, kh, kw = kernel.shape[:3]
    if kh == 1 or stride_t != 1:
        return ORIGINAL(x, kernel, stride_t=stride_t, dtype=dtype)
    b, tp, h, w, c = x.shape
    t = tp - kt + 1
    out = 0
    for i in range(kt):
        xi = x[:, i:i + t].reshape(b * t, h, w, c).astype(dtype)
        out = out + lax.conv_general_dilated(xi, kernel[i].astype(dtype), (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             precision=vae_blocks._precision(dtype))
    return out.reshape(b, t, h, w, -1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--latent-frames", type=int, default=2)
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    graphdef, state = random_vae(preset("wan2.2"))
    z = jnp.asarray(np.random.default_rng(0).standard_normal((1, 48, args.latent_frames, args.size, args.size)),
                    jnp.float32)
    compiled = {}
    for name, fn in (("conv3d", ORIGINAL), ("sum2d", conv3d_sum2d)):
        vae_blocks.conv3d = fn
        compiled[name] = _decode.lower(graphdef, state, z, normalize=False, tiling=None, slice_batch=True,
                                       clamp=True).compile()
        jax.block_until_ready(compiled[name](state, z))
    vae_blocks.conv3d = ORIGINAL
    times = {k: [] for k in compiled}
    for _ in range(args.repeats):
        for name, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(state, z))
            times[name].append(time.perf_counter() - t0)
    print(json.dumps({k: {"min_s": min(v), "times_s": v} for k, v in times.items()}))


if __name__ == "__main__":
    main()
