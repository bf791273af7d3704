"""`wan22 bench vae`: encode and decode time and peak memory of a Wan VAE at the real widths, random weights.

    wan22 bench vae --which 2.2 --frames 17 --height 256 --width 256 [--dtype bf16] [--tiled] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.bench.timing import device_description, emit, peak_bytes, time_compiled
from wan22_jax.cpu_kernels import conv as cpu_conv
from wan22_jax.models.vae_config import preset
from wan22_jax.models.vae import _decode, _encode, random_vae
from wan22_jax.models.vae_tiling import Tiling
from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--which", choices=["2.1", "2.2"], default="2.2", help="VAE version (real widths)")
    p.add_argument("--frames", type=int, default=17, help="video frames, 1 + 4k")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute and parameter dtype")
    p.add_argument("--tiled", action="store_true", help="spatial tiling (256 px tiles, 64 px overlap)")
    p.add_argument("--tile", type=int, default=256, help="tile edge in pixels (with --tiled)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (with --tiled)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-encode", action="store_true", help="time the decoder only")
    p.add_argument("--memory-only", action="store_true",
                   help="compile only and report XLA's planned memory (temp/argument/output bytes) per call: "
                        "sizes too slow to run here (720p x 121 frames on a CPU) still show their footprint")
    add_kernel_arguments(p)
    p.add_argument("--json", action="store_true", help="last line: one JSON object")


def main(args: argparse.Namespace) -> int:
    cfg = preset("wan2.1" if args.which == "2.1" else "wan2.2")
    dtype = DTYPES[args.dtype]
    kernels = kernels_from_args(args)
    graphdef, state = random_vae(cfg, dtype=dtype, param_dtype=dtype, kernels=kernels)
    tiling = Tiling(tile=args.tile, overlap=args.overlap) if args.tiled else None
    s = cfg.spatial_stride
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.uniform(-1, 1, (args.batch, 3, args.frames, args.height, args.width)), jnp.float32)
    latent = jnp.asarray(rng.standard_normal(
        (args.batch, cfg.z_dim, 1 + (args.frames - 1) // 4, args.height // s, args.width // s)), jnp.float32)

    result = {"component": f"vae{args.which}", "device": device_description(), "dtype": args.dtype,
              "tiled": bool(args.tiled), "video": list(video.shape), "latent": list(latent.shape),
              "kernels": dataclasses.asdict(kernels),
              # with --cpu-kernels: whether oneDNN's convolution ran, or why XLA's ran instead
              "cpu_conv": cpu_conv.status() if kernels.conv == "cpu" else None}
    enc = jax.jit(lambda st, v: _encode(graphdef, st, v, normalize=True, tiling=tiling, slice_batch=True))
    dec = jax.jit(lambda st, z: _decode(graphdef, st, z, normalize=True, tiling=tiling, slice_batch=True,
                                        clamp=True))
    calls = ([] if args.skip_encode else [("encode", enc, video)]) + [("decode", dec, latent)]
    for name, fn, x in calls:
        if args.memory_only:
            mem = fn.lower(state, x).compile().memory_analysis()
            result[f"{name}_temp_bytes"] = int(mem.temp_size_in_bytes)
            result[f"{name}_planned_bytes"] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                                  + mem.output_size_in_bytes)
            continue
        t = time_compiled(fn, state, x, repeats=args.repeats)
        result.update({f"{name}_compile_s": t["compile_s"], f"{name}_median_s": t["median_s"],
                       f"{name}_times_s": t["times_s"]})
    if args.memory_only:
        result["peak_bytes"] = max(v for k, v in result.items() if k.endswith("_planned_bytes"))
    else:
        result["peak_bytes"] = peak_bytes()
    emit(result, args.json)
    return 0
