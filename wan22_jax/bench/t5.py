"""`wan22 bench t5 [--layers N] [--tokens 512] [--batch 1] [--dtype bf16|fp32] [--json]`.

Times one encoder forward at umt5-xxl width (dim 4096, 64 heads, ffn 10240, vocab 256384) with random weights.
`--layers` cuts the depth (the time of a layer is the same at any depth; use 1 or 2 on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.bench.timing import device_description, emit, peak_bytes, time_compiled
from wan22_jax.ops import Kernels
from wan22_jax.ops.kernels import ATTENTIONS
from wan22_jax.models.t5 import random_t5, t5_config, t5_forward

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=24, help="encoder layers (umt5-xxl has 24)")
    p.add_argument("--tokens", type=int, default=512, help="sequence length (text_len)")
    p.add_argument("--batch", type=int, default=1, help="prompts per forward")
    p.add_argument("--valid", type=int, default=None, help="unpadded tokens per prompt (default: all)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weights and activations")
    p.add_argument("--attn-impl", choices=ATTENTIONS, default="xla")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def main(args: argparse.Namespace) -> int:
    for name in ("layers", "tokens", "batch", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1")
    valid = args.tokens if args.valid is None else args.valid
    if not 1 <= valid <= args.tokens:
        raise SystemExit(f"error: --valid must be in [1, --tokens={args.tokens}]")
    cfg = dataclasses.replace(t5_config("umt5-xxl"), num_layers=args.layers)
    dtype = DTYPES[args.dtype]
    model = random_t5(cfg, dtype=dtype, param_dtype=dtype, kernels=Kernels(attention=args.attn_impl))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, cfg.vocab_size, size=(args.batch, args.tokens)).astype(np.int32)
    mask = (np.arange(args.tokens)[None, :] < valid).astype(np.int32).repeat(args.batch, 0)
    fn = jax.jit(lambda s, i, m: t5_forward(graphdef, s, i, m))
    timing = time_compiled(fn, state, jnp.asarray(ids), jnp.asarray(mask), repeats=args.repeats)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    result = {
        "component": "t5", "device": device_description(), "dtype": args.dtype, "attn_impl": args.attn_impl,
        "layers": args.layers, "tokens": args.tokens, "batch": args.batch, "valid_tokens": valid,
        "params": n_params, **timing,
        "median_s_per_layer": timing["median_s"] / args.layers, "peak_bytes": peak_bytes(),
    }
    emit(result, args.json)
    return 0
