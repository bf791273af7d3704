"""Weight-only int8 / fp8 quantisation (`wan22_jax.ops.quant`): output error at full width and video PSNR on the
mini-world model.

    python experiments/quant/run.py [--tokens 256] [--parts mini-world,t5,dit] [--out experiments/quant/results]

1. Full-width layers with random weights (kernels N(0, 1/fan_in), the reference cases' scheme): one A14B DiT block
   (width 5120, FFN 13824, 40 heads; patch embedding, time MLPs and head around it) on 256 video tokens and 64
   text rows, and one umT5-XXL layer (4096 / 10240, vocabulary cut to 1024) on 64 tokens. Computed in fp32 so
   that the error is the weights' alone; bf16 weights and compute are listed for scale. Error:
   max|out - ref| / max|ref| and the relative RMS.
2. The mini-world model (all 24 held-out prompts, seed 0, the task's defaults): PSNR of the decoded videos of
   the int8 / fp8 pipeline against the unquantised one, the detector's accuracy, and the bytes of the quantised
   parameters (DiT + text encoder).

Writes quant.csv.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.data.mini_world import held_out_scenes
from wan22_jax.data.prompt_following import accuracy, detect_rows
from wan22_jax.models.dit import DiTConfig, random_dit
from wan22_jax.models.t5 import T5Config, random_t5
from wan22_jax.ops.quant import quantize_module, weight_bytes
from wan22_jax.pipeline import Wan22Pipeline

A14B_BLOCK = DiTConfig(model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=1, text_len=512)


def errors(out, ref) -> dict:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return {"max_rel": float(np.max(np.abs(out - ref)) / np.max(np.abs(ref))),
            "rms_rel": float(np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref ** 2)))}


def psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def dit_rows(tokens: int) -> list[dict]:
    rng = np.random.default_rng(0)
    side = int(round(np.sqrt(tokens))) * 2  # tokens = (side / 2)^2 with the 1x2x2 patch
    x = jnp.asarray(rng.standard_normal((1, 16, 1, side, side)), jnp.float32)
    t = jnp.array([700.0])
    ctx = jnp.asarray(rng.standard_normal((1, 64, 4096)), jnp.float32)
    model = random_dit(A14B_BLOCK, seed=0)
    ref = jax.block_until_ready(model(x, t, ctx))
    rows = []
    for mode in ("int8", "fp8"):
        q = quantize_module(model, mode)
        rows.append({"what": f"A14B DiT block (5120), {x.shape[3] * x.shape[4] // 4} tokens", "weights": mode,
                     "compute": "fp32", **errors(q(x, t, ctx), ref),
                     "param_bytes": weight_bytes(q), "param_bytes_fp32": weight_bytes(model)})
        print(rows[-1], flush=True)
        del q
    del model
    bf = random_dit(A14B_BLOCK, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    rows.append({"what": rows[0]["what"], "weights": "bf16", "compute": "bf16", **errors(bf(x, t, ctx), ref),
                 "param_bytes": weight_bytes(bf), "param_bytes_fp32": rows[0]["param_bytes_fp32"]})
    print(rows[-1], flush=True)
    return rows


def t5_rows() -> list[dict]:
    cfg = dataclasses.replace(T5Config(), num_layers=1, vocab_size=1024)
    model = random_t5(cfg, dtype=jnp.float32, param_dtype=jnp.float32)
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(1, 1024, (1, 64)), jnp.int32)
    mask = jnp.ones((1, 64), jnp.int32)
    ref = model(ids, mask)
    rows = []
    for mode in ("int8", "fp8"):
        q = quantize_module(model, mode)
        rows.append({"what": "umT5-XXL layer (4096), 64 tokens", "weights": mode, "compute": "fp32",
                     **errors(q(ids, mask), ref), "param_bytes": weight_bytes(q),
                     "param_bytes_fp32": weight_bytes(model)})
        print(rows[-1], flush=True)
    del model
    bf = random_t5(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    rows.append({"what": rows[0]["what"], "weights": "bf16", "compute": "bf16", **errors(bf(ids, mask), ref),
                 "param_bytes": weight_bytes(bf), "param_bytes_fp32": rows[0]["param_bytes_fp32"]})
    print(rows[-1], flush=True)
    return rows


def mini_world_rows() -> list[dict]:
    pipe = Wan22Pipeline.from_pretrained(progress=False)
    scenes = held_out_scenes()
    call = dict(prompt=[s.prompt for s in scenes], seed=0, progress=False)
    ref = pipe(**call)

    def params(p):
        dit = sum(leaf.nbytes for _, s in p.experts.values() for leaf in jax.tree.leaves(s))
        return dit + weight_bytes(p.text_encoder.model())

    rows = [{"what": "mini-world, 24 prompts", "weights": "fp32", "compute": "fp32", "psnr_db": "inf",
             "acc_all": accuracy(detect_rows([v.frames for v in ref.videos], scenes))["all"],
             "param_bytes": params(pipe)}]
    print(rows[-1], flush=True)
    for mode in ("int8", "fp8"):
        q = pipe.quantized(mode)
        out = q(**call)
        rows.append({"what": "mini-world, 24 prompts", "weights": mode, "compute": "fp32",
                     "psnr_db": round(psnr(out.video, ref.video), 2),
                     "acc_all": accuracy(detect_rows([v.frames for v in out.videos], scenes))["all"],
                     "param_bytes": params(q)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--parts", default="mini-world,t5,dit", help="which rows to compute (comma-separated)")
    ap.add_argument("--out", default="experiments/quant/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    rows = ((mini_world_rows() if "mini-world" in parts else []) + (t5_rows() if "t5" in parts else [])
            + (dit_rows(args.tokens) if "dit" in parts else []))
    keys = ["what", "weights", "compute", "max_rel", "rms_rel", "psnr_db", "acc_all", "param_bytes",
            "param_bytes_fp32"]
    with open(out / "quant.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.3g}" if isinstance(v, float) and k in ("max_rel", "rms_rel") else v)
                        for k, v in r.items()})


if __name__ == "__main__":
    main()
