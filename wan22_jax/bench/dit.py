"""`wan22 bench dit`: one DiT forward with random weights at a preset's (or a checkpoint config's) real width."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.bench.timing import device_description, emit, peak_bytes, time_compiled
from wan22_jax.errors import InputError
from wan22_jax.flops import dit_forward_flops, peak_flops
from wan22_jax.convert.dit import read_dit_config
from wan22_jax.cpu_kernels import sgemm as cpu_sgemm
from wan22_jax.ops.kernels import ATTENTIONS
from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args
from wan22_jax.models.dit import DIT_PRESETS, WanModel
from wan22_jax.sharding import make_mesh, mesh_context
from wan22_jax.sharding.loading import init_sharded

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(DIT_PRESETS), help="model preset (real width)")
    src.add_argument("--checkpoint", help="DiT folder whose config.json gives the width (weights not loaded)")
    p.add_argument("--latent", required=True, help="latent grid F,H,W before patching, e.g. 31,44,80")
    p.add_argument("--layers", type=int, help="use only N blocks (default: all)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="compute and parameter dtype")
    p.add_argument("--attention", choices=ATTENTIONS, help="attention implementation (default: xla, or cpu with "
                   "--cpu-kernels)")
    add_kernel_arguments(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, help="text rows (default: the config's text_len)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mesh", metavar="SPEC", help="shard over a device mesh, e.g. fsdp=4,seq=2 (axes data, fsdp, "
                   "seq, tensor; see wan22_jax.sharding)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")


def _forward(graphdef, state, x, t, ctx):
    return nnx.merge(graphdef, state)(x, t, ctx)


def main(args: argparse.Namespace) -> int:
    if args.preset:
        cfg = DIT_PRESETS[args.preset]
    else:
        cfg = read_dit_config(args.checkpoint)[0]
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    if args.text_len:
        cfg = dataclasses.replace(cfg, text_len=args.text_len)
    try:
        grid = tuple(int(v) for v in args.latent.split(","))
        assert len(grid) == 3
    except (ValueError, AssertionError):
        raise InputError(f"--latent {args.latent!r}: expected three integers F,H,W") from None
    dtype = DTYPES[args.dtype]
    kernels = kernels_from_args(args)
    if args.attention:
        kernels = dataclasses.replace(kernels, attention=args.attention)
    build = functools.partial(WanModel, cfg, dtype=dtype, param_dtype=dtype, kernels=kernels, rngs=nnx.Rngs(0))
    mesh = make_mesh(args.mesh) if args.mesh else None
    if mesh is None:
        graphdef, state = nnx.split(build())
    else:  # created on its shards: a full-size model need not fit one device
        graphdef, state = init_sharded(build, "dit", mesh)
    rng = np.random.default_rng(0)
    c_x = cfg.in_dim
    x = jnp.asarray(rng.standard_normal((args.batch, c_x, *grid)), jnp.float32)
    t = jnp.full((args.batch,), 500.0, jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((args.batch, cfg.text_len, cfg.text_dim)), jnp.float32)
    fn = jax.jit(functools.partial(_forward, graphdef))
    with mesh_context(mesh):
        timing = time_compiled(fn, state, x, t, ctx, repeats=args.repeats)
    flops = dit_forward_flops(cfg, grid, batch=args.batch)
    device = device_description()
    peak = peak_flops(device, args.dtype)
    result = {
        "component": "dit", "preset": args.preset or str(args.checkpoint), "layers": cfg.num_layers,
        "latent": list(grid), "tokens": math.prod(g // p for g, p in zip(grid, cfg.patch_size)), "dtype": args.dtype,
        "kernels": dataclasses.asdict(kernels), "batch": args.batch,
        "mesh": args.mesh, "device": device, "compile_s": timing["compile_s"], "median_s": timing["median_s"],
        "peak_bytes": peak_bytes(), "flops": flops, "flops_per_s": flops / timing["median_s"],
        "mfu": None if peak is None else flops / timing["median_s"] / peak,
        # with --cpu-kernels: whether the MKL kernel ran, or why XLA ran instead
        "cpu_sgemm": cpu_sgemm.status() if "cpu" in (kernels.matmul, kernels.attention) else None,
    }
    emit(result, args.json)
    return 0
