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
from wan22_jax.kernels import cpu_sgemm
from wan22_jax.models.attention import IMPLEMENTATIONS
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
    p.add_argument("--attention", choices=IMPLEMENTATIONS, default="xla")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, help="text rows (default: the config's text_len)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mesh", metavar="SPEC", help="shard over a device mesh, e.g. fsdp=4,seq=2 (axes data, fsdp, "
                   "seq, tensor; see wan22_jax.sharding)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")


def _forward(graphdef, state, x, t, ctx, attn_impl):
    return nnx.merge(graphdef, state)(x, t, ctx, attn_impl=attn_impl)


def main(args: argparse.Namespace) -> int:
    if args.preset:
        cfg = DIT_PRESETS[args.preset]
    else:
        from wan22_jax.convert.dit import read_dit_config
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
    build = functools.partial(WanModel, cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
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
    fn = jax.jit(functools.partial(_forward, graphdef, attn_impl=args.attention))
    with mesh_context(mesh):
        timing = time_compiled(fn, state, x, t, ctx, repeats=args.repeats)
    flops = dit_forward_flops(cfg, grid, batch=args.batch)
    device = device_description()
    peak = peak_flops(device, args.dtype)
    result = {
        "component": "dit", "preset": args.preset or str(args.checkpoint), "layers": cfg.num_layers,
        "latent": list(grid), "tokens": math.prod(g // p for g, p in zip(grid, cfg.patch_size)), "dtype": args.dtype, "attention": args.attention, "batch": args.batch,
        "mesh": args.mesh, "device": device, "compile_s": timing["compile_s"], "median_s": timing["median_s"],
        "peak_bytes": peak_bytes(), "flops": flops, "flops_per_s": flops / timing["median_s"],
        "mfu": None if peak is None else flops / timing["median_s"] / peak,
        # which fp32 matmul ran on a CPU: MKL's (wan22_jax.kernels.cpu_sgemm) or XLA's dot, and why
        "cpu_fp32_matmul": cpu_sgemm.status() if jax.default_backend() == "cpu" else None,
    }
    emit(result, args.json)
    return 0
