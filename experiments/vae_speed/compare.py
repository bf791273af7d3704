"""Side-by-side CPU timing of the Wan2.2 (or 2.1) VAE decode: official PyTorch code vs ours, same random
weights and latent, real widths.

The official module is read from the fetched mirror at run time (never committed):
    python experiments/vae_speed/compare.py --which 2.2 --latent-frames 3 --size 8 \
        [--mirror /work/.mirror/Wan-Video+Wan2.2/repo] [--threads 2] [--repeats 3]
Prints both medians, their ratio (ours / official; below 1: ours is faster), the median of the per-repeat paired
ratios (robust to this machine's drifting throughput), the kernels ours ran with (XLA's convolutions unless
--cpu-kernels: oneDNN through wan22_jax.cpu_kernels.conv) and the max relative difference of the outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args


def load_official(mirror: str, which: str):
    import torch
    torch.cuda.current_device = lambda: 0  # the official modules touch CUDA at import on some paths
    name = {"2.1": "vae2_1", "2.2": "vae2_2"}[which]
    src = subprocess.run(["git", "-C", mirror, "show", f"HEAD:wan/modules/{name}.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"official_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"official_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--which", choices=["2.1", "2.2"], default="2.2")
    p.add_argument("--latent-frames", type=int, default=3)
    p.add_argument("--size", type=int, default=8, help="latent height = width")
    p.add_argument("--mirror", default="/work/.mirror/Wan-Video+Wan2.2/repo")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-official", action="store_true")
    add_kernel_arguments(p)
    args = p.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    off = load_official(args.mirror, args.which)
    kwargs = dict(dim=96, z_dim=16) if args.which == "2.1" else dict(dim=160, dec_dim=256, z_dim=48)
    model = off.WanVAE_(dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True], dropout=0.0, **kwargs).eval()
    with torch.no_grad():  # random weights like the reference cases
        for k, v in model.state_dict().items():
            if k.endswith("bias"):
                v.copy_(0.1 * torch.randn_like(v))
            elif k.endswith("gamma"):
                v.copy_(1 + 0.1 * torch.randn_like(v))
            else:
                v.copy_(torch.randn_like(v) / np.sqrt(np.prod(v.shape[1:])))
    z_dim = kwargs["z_dim"]
    z = torch.randn(1, z_dim, args.latent_frames, args.size, args.size)
    scale = [torch.zeros(z_dim), torch.ones(z_dim)]

    import jax
    from wan22_jax.convert.mapping import convert
    from wan22_jax.convert.vae import abstract_vae, official_table
    from wan22_jax.io.tensor_source import DictSource
    from wan22_jax.models.vae_config import preset
    from wan22_jax.models.vae import decode
    from wan22_jax.state import fill_state, flat_state

    cfg = preset("wan2.1" if args.which == "2.1" else "wan2.2")
    kernels = kernels_from_args(args)
    graphdef, abstract = abstract_vae(cfg, kernels=kernels)
    source = DictSource({k: v.numpy() for k, v in model.state_dict().items()})
    state = fill_state(abstract, convert(official_table(cfg), source, flat_state(abstract)))
    state = jax.device_put(state)
    zn = z.numpy()

    def ours():
        return jax.block_until_ready(decode(graphdef, state, zn, normalize=False))

    def official():
        with torch.no_grad():
            return model.decode(z, scale).clamp_(-1, 1)

    runs = {"ours": ours} if args.skip_official else {"official": official, "ours": ours}
    times = {k: [] for k in runs}
    outs = {k: fn() for k, fn in runs.items()}  # warm-up (and compile)
    for _ in range(args.repeats):  # alternate, so that load from other processes hits both alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    from wan22_jax.cpu_kernels import conv as cpu_conv
    result = {"which": args.which, "latent": list(z.shape), "threads": args.threads, "jax": jax.__version__,
              "torch": torch.__version__, "device": str(jax.devices()[0]),
              "kernels": str(kernels), "cpu_conv": cpu_conv.status() if kernels.conv == "cpu" else None}
    for k, ts in times.items():
        result.update({f"{k}_median_s": statistics.median(ts), f"{k}_min_s": min(ts), f"{k}_times_s": ts})
    if not args.skip_official:
        result["ratio_median"] = result["ours_median_s"] / result["official_median_s"]
        result["ratio_min"] = result["ours_min_s"] / result["official_min_s"]
        result["paired_ratio_median"] = statistics.median(a / b for a, b in zip(times["ours"], times["official"]))
        ref, mine = outs["official"].numpy(), np.asarray(outs["ours"])
        result["max_rel_diff"] = float(np.abs(mine - ref).max() / np.abs(ref).max())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
