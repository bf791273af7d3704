"""`wan22 generate`: one video from a prompt (and an image), written as mp4."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp

from wan22_jax.bench.timing import peak_bytes
from wan22_jax.conditioning import check_frames
from wan22_jax.configs import TASKS
from wan22_jax.errors import Wan22Error
from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.presets import PRESETS, random_pipeline


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=sorted(TASKS), help="default: inferred from the checkpoint (tiny-random: "
                   "ti2v-5B)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", help="default: the task's (official tasks: the official negative prompt; "
                   "the mini-world model: the empty prompt)")
    p.add_argument("--image", help="first frame (i2v-A14B, ti2v-5B)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="official release folder or our converted folder (default: the "
                     "embedded model)")
    src.add_argument("--preset", choices=PRESETS, help="random weights of a tiny model of the task's architecture")
    p.add_argument("--size", help="WxH in pixels, e.g. 1280x704 (default: the task's)")
    p.add_argument("--frames", type=int, help="1 + 4k frames (default: the task's)")
    p.add_argument("--steps", type=int)
    p.add_argument("--solver", default="unipc", help="unipc, dpm++, euler, heun, rk4, ddim, dpm++-sde")
    p.add_argument("--shift", type=float)
    p.add_argument("--guide-scale", type=float, nargs="+", help="one value, or low-noise high-noise for A14B")
    p.add_argument("--eta", type=float, default=0.0, help="noise re-injection of --solver ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="DiT dtype (default: the checkpoint task's: bf16 for "
                   "releases, fp32 for the embedded mini-world model)")
    p.add_argument("--vae-tiling", action="store_true", help="decode in overlapping spatial tiles")
    p.add_argument("--mesh", metavar="SPEC", help="shard over a device mesh, e.g. fsdp=4,seq=2 (axes data, fsdp, "
                   "seq, tensor; the product must equal the device count)")
    add_kernel_arguments(p)
    p.add_argument("--out", default="out.mp4")
    p.add_argument("--fps", type=int, help="default: the task's (16 or 24)")


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        if args.frames is not None:  # cheap checks first: a bad argument should not wait for a model load
            check_frames(args.frames)
        kernels = kernels_from_args(args)
        if args.preset:
            pipe = random_pipeline(args.task or "ti2v-5B", seed=0).with_kernels(kernels)
            if args.mesh:
                pipe = pipe.sharded(args.mesh)
        else:
            dtype = None if args.dtype is None else (jnp.bfloat16 if args.dtype == "bf16" else jnp.float32)
            pipe = Wan22Pipeline.from_pretrained(args.checkpoint, task=args.task, mesh=args.mesh, dtype=dtype,
                                                 kernels=kernels)
        if args.vae_tiling:
            pipe = pipe.with_vae_tiling()
        width = height = None
        if args.size:
            try:
                width, height = (int(v) for v in args.size.lower().replace("*", "x").split("x"))
            except ValueError:
                print(f"error: --size {args.size!r}: expected WxH, e.g. 1280x704", file=sys.stderr)
                return 2
        image = None
        if args.image:
            from PIL import Image
            image = Image.open(args.image)
        scale = None
        if args.guide_scale:
            scale = args.guide_scale[0] if len(args.guide_scale) == 1 else tuple(args.guide_scale)
        load_s = time.perf_counter() - t0
        out = pipe(prompt=args.prompt, negative_prompt=args.negative_prompt, image=image, num_frames=args.frames,
                   height=height, width=width, num_inference_steps=args.steps, guidance_scale=scale,
                   solver=args.solver, shift=args.shift, eta=args.eta, seed=args.seed)
        path = out.videos[0].save(args.out, fps=args.fps)
    except Wan22Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frames = out.videos[0].frames
    total = time.perf_counter() - t0
    print(f"wrote {Path(path).resolve()}: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, "
          f"load {load_s:.1f}s, denoise {out.denoise_s:.1f}s, total {total:.1f}s, "
          f"peak memory {peak_bytes() / 2**30:.2f} GiB")
    return 0
