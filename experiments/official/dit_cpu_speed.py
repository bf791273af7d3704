"""Side by side on this CPU: our jitted DiT forward vs the official PyTorch WanModel.forward, same weights/shapes.

Default shape (from issue 2): width 768, 6 layers, 6 heads, ffn 3072, latent 5x32x40 (1,600 tokens), 300 text
tokens (padded to text_len 512 by both models), fp32. Prints both medians, the ratio (and the median of per-repeat
ratios, robust to this machine's drifting throughput), FLOP/s, the share of this CPU's measured fp32 matmul peak,
the kernels our forward ran with (XLA unless --cpu-kernels) and the parity error.

    python experiments/official/dit_cpu_speed.py --official /tmp/wan22_official [--cpu-kernels] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args  # noqa: E402


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True, help="folder holding the official wan/ package")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--latent", default="5,32,40")
    p.add_argument("--text", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--attention", help="our attention implementation (default: xla, or cpu with --cpu-kernels)")
    add_kernel_arguments(p)
    p.add_argument("--peak-size", type=int, default=3072,
                   help="square matmul size timed as the peak (the best of MKL, XLA's dot and torch)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch
    from load_official import import_official

    if args.threads:
        torch.set_num_threads(args.threads)
    official = import_official(args.official, "model")
    grid = tuple(int(v) for v in args.latent.split(","))
    kw = dict(model_type="t2v", in_dim=16, dim=args.dim, ffn_dim=args.ffn, freq_dim=256, text_dim=4096,
              out_dim=16, num_heads=args.heads, num_layers=args.layers, text_len=512)
    torch.manual_seed(0)
    ref_model = official.WanModel(**kw).eval()
    with torch.no_grad():  # init_weights zeroes the head: give every parameter a non-trivial value
        for prm in ref_model.parameters():
            prm.normal_(0, 0.02)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, *grid)).astype(np.float32)
    ctx = rng.standard_normal((args.text, 4096)).astype(np.float32)
    t = np.array([500.0], np.float32)
    seq_len = grid[0] * (grid[1] // 2) * (grid[2] // 2)

    def torch_forward():
        with torch.no_grad():
            return ref_model([torch.from_numpy(x)], torch.from_numpy(t), [torch.from_numpy(ctx)], seq_len)[0]

    ref = torch_forward().numpy()

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from wan22_jax.convert.dit import OFFICIAL, convert_dit
    from wan22_jax.flops import dit_forward_flops
    from wan22_jax.io.tensor_source import DictSource
    from wan22_jax.models.dit import DiTConfig
    from wan22_jax.ops import with_kernels

    cfg = DiTConfig(**kw)
    sd = {k: v.detach().numpy() for k, v in ref_model.state_dict().items()}
    graphdef, state = convert_dit(DictSource(sd), cfg, OFFICIAL)
    kernels = kernels_from_args(args)
    if args.attention:
        kernels = dataclasses.replace(kernels, attention=args.attention)
    graphdef = nnx.split(with_kernels(nnx.merge(graphdef, state), kernels))[0]
    fwd = jax.jit(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))
    xj, tj, cj = jnp.asarray(x[None]), jnp.asarray(t), jnp.asarray(ctx[None])
    t0 = time.perf_counter()
    ours = np.asarray(fwd(state, xj, tj, cj))[0]
    compile_s = time.perf_counter() - t0

    # This CPU's fp32 matmul peak, as measured: the best of a large square matmul on MKL's sgemm, XLA's dot and
    # torch, both threads. Timed inside every repeat too, so that each repeat's fraction of it is drift-free.
    from wan22_jax.cpu_kernels import sgemm as cpu_sgemm
    a = jnp.asarray(rng.standard_normal((args.peak_size, args.peak_size)), jnp.float32)
    at = torch.from_numpy(np.asarray(a))
    peak_fns = {"xla": jax.jit(lambda a: a @ a), "torch": lambda a: torch.mm(at, at)}
    if cpu_sgemm.available():
        peak_fns["mkl"] = jax.jit(lambda a: cpu_sgemm.matmul(a, a))
    for fn in peak_fns.values():
        jax.block_until_ready(fn(a))
    peak_from: dict[str, int] = {}

    def peak_gflops():
        best = {name: min(_timed(lambda: jax.block_until_ready(fn(a))) for _ in range(3))
                for name, fn in peak_fns.items()}
        name = min(best, key=best.get)
        peak_from[name] = peak_from.get(name, 0) + 1
        return 2 * args.peak_size ** 3 / best[name] / 1e9

    # Alternate the two implementations so that background load on this machine hits both alike.
    torch_times, jax_times, peaks = [], [], []
    for _ in range(args.repeats):
        torch_times.append(_timed(torch_forward))
        jax_times.append(_timed(lambda: jax.block_until_ready(fwd(state, xj, tj, cj))))
        peaks.append(peak_gflops())

    flops = dit_forward_flops(cfg, grid)
    # ours embeds a short prompt's zero padding rows once (one row with logit bias log(count)): fewer FLOPs
    own_flops = dit_forward_flops(cfg, grid, text_len=min(args.text + 1, cfg.text_len))
    ratios = [a / b for a, b in zip(torch_times, jax_times)]
    res = {
        "shape": dataclasses.asdict(cfg) | {"latent": grid, "text_rows": args.text},
        "official_median_s": statistics.median(torch_times), "ours_median_s": statistics.median(jax_times),
        "ours_compile_s": compile_s, "flops": flops,
        "speedup": statistics.median(torch_times) / statistics.median(jax_times),
        # this machine's throughput drifts by tens of percent over seconds: each repeat times both back to back,
        # and the median of those paired ratios is the robust number
        "paired_speedup_median": statistics.median(ratios), "paired_speedups": ratios,
        "kernels": dataclasses.asdict(kernels), "cpu_sgemm": cpu_sgemm.status(),
        "official_gflops_per_s": flops / statistics.median(torch_times) / 1e9,
        "ours_gflops_per_s": flops / statistics.median(jax_times) / 1e9,
        "matmul_peak_gflops_per_s": statistics.median(peaks), "matmul_peak_from": peak_from,
        # the official model's FLOPs (512 text rows) over each repeat's time, as a share of that repeat's peak
        "ours_fraction_of_matmul_peak": statistics.median(flops / t / 1e9 / pk for t, pk in zip(jax_times, peaks)),
        "ours_fraction_of_matmul_peak_own_flops": statistics.median(
            own_flops / t / 1e9 / pk for t, pk in zip(jax_times, peaks)), "ours_flops": own_flops,
        "official_fraction_of_matmul_peak": statistics.median(
            flops / t / 1e9 / pk for t, pk in zip(torch_times, peaks)),
        "parity_max_abs_over_max_ref": float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref))),
        "torch_threads": torch.get_num_threads(),
        "official_times_s": torch_times, "ours_times_s": jax_times,
    }
    for k, v in res.items():
        if k != "shape":
            print(f"{k}: {v}")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
