"""Step cost vs token count: measured DiT forward time against the analytic FLOP model (wan22_jax.flops).

For one DiT width, several latent grids (resolutions and frame counts) are timed after compilation; the FLOP
model predicts time = FLOPs / R with one fitted throughput R (least squares in log space). The plot shows
measured vs predicted time per token count, and the script prints the worst relative deviation.

    python experiments/scaling_cost/run.py                          # CPU-sized default (width 768, 4 layers)
    python experiments/scaling_cost/run.py --preset ti2v-5B --layers 4 --dtype bf16 --grids 5,22,40 ...  # GPU
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.bench.timing import device_description, time_compiled
from wan22_jax.flops import dit_forward_flops
from wan22_jax.models.dit import DIT_PRESETS, DiTConfig, WanModel

DEFAULT_GRIDS = ["1,16,16", "2,16,16", "2,24,24", "3,24,32", "5,24,32", "5,32,40", "7,32,40", "9,32,48"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", help="real width of a preset (default: a CPU-sized width-768 model)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--grids", nargs="+", default=DEFAULT_GRIDS, help="latent grids F,H,W")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()

    if args.preset:
        cfg = dataclasses.replace(DIT_PRESETS[args.preset], num_layers=args.layers)
    else:
        cfg = DiTConfig(model_type="t2v", dim=768, ffn_dim=3072, num_heads=6, num_layers=args.layers,
                        in_dim=16, out_dim=16)
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    graphdef, state = nnx.split(WanModel(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    fwd = jax.jit(functools.partial(lambda g, s, x, t, c: nnx.merge(g, s)(x, t, c), graphdef))
    rng = np.random.default_rng(0)
    ctx = jnp.asarray(rng.standard_normal((1, cfg.text_len, cfg.text_dim)), jnp.float32)
    rows = []
    for spec in args.grids:
        grid = tuple(int(v) for v in spec.split(","))
        x = jnp.asarray(rng.standard_normal((1, cfg.in_dim, *grid)), jnp.float32)
        timing = time_compiled(fwd, state, x, jnp.array([500.0]), ctx, repeats=args.repeats)
        tokens = grid[0] * (grid[1] // 2) * (grid[2] // 2)
        rows.append({"grid": spec, "tokens": tokens, "flops": dit_forward_flops(cfg, grid),
                     "median_s": timing["median_s"], "compile_s": timing["compile_s"]})
        print(rows[-1])
    flops = np.array([r["flops"] for r in rows], float)
    secs = np.array([r["median_s"] for r in rows], float)
    rate = float(np.exp(np.mean(np.log(flops / secs))))  # one throughput, geometric mean fit
    for r in rows:
        r["predicted_s"] = r["flops"] / rate
        r["rel_dev"] = r["median_s"] / r["predicted_s"] - 1
    worst = max(abs(r["rel_dev"]) for r in rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cost_vs_tokens.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {"device": device_description(), "dtype": args.dtype, "config": dataclasses.asdict(cfg),
               "fitted_flops_per_s": rate, "worst_rel_dev": worst}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tok = [r["tokens"] for r in rows]
    plt.figure(figsize=(6, 4))
    plt.loglog(tok, secs, "o", label="measured")
    plt.loglog(tok, [r["predicted_s"] for r in rows], "-", label=f"FLOP model / {rate / 1e9:.0f} GFLOP/s")
    plt.xlabel("video tokens")
    plt.ylabel("DiT forward time (s)")
    plt.title(f"{summary['device']}, width {cfg.dim}, {cfg.num_layers} layers, {args.dtype}: worst dev "
              f"{worst:.0%}", fontsize=9)
    plt.legend()
    plt.tight_layout()
    plt.savefig(out / "cost_vs_tokens.png", dpi=110)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
