"""The CPU's fp32 GEMM and convolution back ends, one against the other at the DiT's and the VAE's shapes.

GEMMs: XLA's dot, MKL's sgemm (wan22_jax.cpu_kernels.sgemm, forced on with mode 'mkl') and torch.mm. Convolutions
(causal 3x3x3, channels-last, time already padded): XLA:CPU's (our 'xla' conv form), oneDNN's through
wan22_jax.cpu_kernels.conv, and torch's conv3d (the official code's; NCDHW). Min of --repeats jitted calls each,
in GFLOP/s; which one wins decides `WAN22_CPU_MATMUL=auto` and the VAE's conv path.

    python experiments/official/cpu_backends.py [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

GEMMS = [(1600, 768, 768), (1600, 768, 3072), (1600, 3072, 768), (512, 4096, 768), (3072, 3072, 3072)]
CONVS = [(6, 32, 32, 512, 512), (6, 64, 64, 256, 256), (6, 32, 32, 1024, 512), (4, 16, 16, 1024, 1024),
         (3, 8, 8, 1024, 1024)]  # (frames incl. 2 cached, H, W, C in, C out)


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    from wan22_jax.cpu_kernels import conv as cpu_conv, sgemm as cpu_sgemm
    from wan22_jax.ops import conv3d

    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in GEMMS:
        a, w = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        aj, wj, at, wt = jnp.asarray(a), jnp.asarray(w), torch.from_numpy(a), torch.from_numpy(w)
        fns = {"xla": jax.jit(lambda a, w: a @ w)}
        times = {"xla": _best(lambda: fns["xla"](aj, wj).block_until_ready(), args.repeats),
                 "torch": _best(lambda: torch.mm(at, wt), args.repeats)}
        if cpu_sgemm.available():
            mkl = jax.jit(lambda a, w: cpu_sgemm.matmul(a, w))
            mkl(aj, wj).block_until_ready()
            times["mkl"] = _best(lambda: mkl(aj, wj).block_until_ready(), args.repeats)
        rows.append({"op": "gemm", "shape": [m, k, n],
                     **{f"{name}_gflops": 2 * m * k * n / t / 1e9 for name, t in times.items()}})
    for tp, h, w, c, o in CONVS:
        x = rng.standard_normal((1, tp, h, w, c), np.float32)
        kern = (rng.standard_normal((3, 3, 3, c, o)) * 0.02).astype(np.float32)
        xj, kj = jnp.asarray(x), jnp.asarray(kern)
        xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
        kt = torch.from_numpy(kern).permute(4, 3, 0, 1, 2).contiguous()
        times = {}
        with torch.no_grad():
            times["torch"] = _best(lambda: F.conv3d(xt, kt, padding=(0, 1, 1)), args.repeats)
        for name in ("xla", "taps", "cpu"):
            if name == "cpu" and not cpu_conv.available():
                continue
            fn = jax.jit(lambda x, k, name=name: conv3d(x, k, impl=name))
            fn(xj, kj).block_until_ready()
            times["onednn" if name == "cpu" else name] = _best(lambda: fn(xj, kj).block_until_ready(), args.repeats)
        flops = 2 * (tp - 2) * h * w * 27 * c * o
        rows.append({"op": "conv3d", "shape": [tp, h, w, c, o],
                     **{f"{name}_gflops": flops / t / 1e9 for name, t in times.items()}})
    for row in rows:
        print(row["op"], row["shape"], {k: round(v) for k, v in row.items() if k.endswith("_gflops")})
    if args.json:
        print(json.dumps({"matmul": cpu_sgemm.status(), "conv": cpu_conv.status(), "rows": rows}))


if __name__ == "__main__":
    main()
