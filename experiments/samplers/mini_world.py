"""Sampler study on the trained mini-world model: every sampler at 4-50 steps against a 200-step reference
from the same noise, plus the detector's prompt-following accuracy.

    python experiments/samplers/mini_world.py [--checkpoint FOLDER] [--out experiments/samplers/results]

For each sampler and step count, the 24 held-out prompts are generated from seed 0 (the same initial noise for
every run). Error = max|latents - ref| / max|ref| over the batch, ref = 200 RK4 steps (fixed shift, guidance).
NFE counts model evaluations per sample (CFG's two branches run as one batched evaluation): steps x stages
(Euler, DPM++ and UniPC: N; Heun 2N - 1 and RK4 4N - 1, their last step being Euler / Ralston).
Writes mini_world_samplers.csv and mini_world_samplers.png (error and accuracy vs NFE).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from wan22_jax.data.mini_world import held_out_scenes
from wan22_jax.data.prompt_following import accuracy, detect_rows
from wan22_jax.pipeline import Wan22Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import pyplot, save_figure, write_csv  # noqa: E402

SAMPLERS = {"euler": 1, "heun": 2, "rk4": 4, "dpm++": 1, "unipc": 1}
STEPS = [4, 6, 8, 10, 15, 20, 30, 50]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default="experiments/samplers/results")
    ap.add_argument("--ref-steps", type=int, default=200)
    args = ap.parse_args()
    pipe = Wan22Pipeline.from_pretrained(args.checkpoint)
    scenes = held_out_scenes()
    prompts = [s.prompt for s in scenes]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    common = dict(seed=0, progress=False)
    ref = pipe(prompt=prompts, solver="rk4", num_inference_steps=args.ref_steps, output_type="latent",
               **common).latents
    ref = np.asarray(ref, np.float64)
    rows = []
    for name, stages in SAMPLERS.items():
        for steps in STEPS:
            res = pipe(prompt=prompts, solver=name, num_inference_steps=steps, **common)
            err = float(np.max(np.abs(np.asarray(res.latents, np.float64) - ref)) / np.max(np.abs(ref)))
            acc = accuracy(detect_rows([v.frames for v in res.videos], scenes))
            nfe = steps * stages - (stages - 1)
            rows.append({"sampler": name, "steps": steps, "nfe": nfe, "rel_err": f"{err:.4g}",
                         **{f"acc_{k}": f"{v:.3f}" for k, v in acc.items()}})
            print(rows[-1], flush=True)
    write_csv(out / "mini_world_samplers.csv", rows)
    plot(rows, out / "mini_world_samplers.png", args.ref_steps)
    print(f"took {time.perf_counter() - t0:.0f} s")


def plot(rows, path: Path, ref_steps: int) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in SAMPLERS:
        r = [x for x in rows if x["sampler"] == name]
        nfe = [x["nfe"] for x in r]
        a.loglog(nfe, [float(x["rel_err"]) for x in r], "o-", ms=3, label=name)
        b.semilogx(nfe, [float(x["acc_all"]) for x in r], "o-", ms=3, label=name)
    a.set_xlabel("model evaluations (NFE)")
    a.set_ylabel(f"max|x - ref| / max|ref| (ref: RK4, {ref_steps} steps)")
    a.set_title("mini-world: error vs NFE")
    b.set_xlabel("model evaluations (NFE)")
    b.set_ylabel("held-out prompt following (all three attributes)")
    b.set_ylim(0, 1.02)
    b.set_title("detector accuracy vs NFE")
    a.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
