"""Quality cost of step caching (`wan22_jax.models.step_cache.StepCache`) on the trained mini-world model:
for several thresholds, the share of skipped block evaluations, the PSNR of the decoded videos against the
uncached run from the same noise, the detector's prompt-following accuracy, and the denoising time.

    python experiments/step_cache/run.py [--checkpoint FOLDER] [--steps 50] [--out experiments/step_cache/results]

All 24 held-out prompts, seed 0, UniPC, the task's shift and guidance. Writes step_cache.csv and
step_cache.png.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from wan22_jax.data.mini_world import held_out_scenes
from wan22_jax.data.prompt_following import accuracy, detect_rows
from wan22_jax.models.step_cache import StepCache
from wan22_jax.pipeline import Wan22Pipeline

THRESHOLDS = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def timed(pipe, **call):
    pipe(**call)  # compile
    t0 = time.perf_counter()
    out = pipe(**call)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--max-skips", type=int, default=3)
    ap.add_argument("--out", default="experiments/step_cache/results")
    args = ap.parse_args()
    pipe = Wan22Pipeline.from_pretrained(args.checkpoint)
    scenes = held_out_scenes()
    call = dict(prompt=[s.prompt for s in scenes], num_inference_steps=args.steps, seed=0, progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref, ref_s = timed(pipe, **call)
    ref_acc = accuracy(detect_rows([v.frames for v in ref.videos], scenes))
    rows = [{"threshold": "none", "skipped_share": 0.0, "psnr_db": "inf", "denoise_s": round(ref_s, 3),
             **{f"acc_{k}": round(v, 3) for k, v in ref_acc.items()}}]
    print(rows[-1], flush=True)
    for th in THRESHOLDS:
        res, secs = timed(pipe, step_cache=StepCache(threshold=th, max_skips=args.max_skips), **call)
        acc = accuracy(detect_rows([v.frames for v in res.videos], scenes))
        rows.append({"threshold": th, "skipped_share": round(res.skipped_steps / args.steps, 3),
                     "psnr_db": round(psnr(res.video, ref.video), 2), "denoise_s": round(secs, 3),
                     **{f"acc_{k}": round(v, 3) for k, v in acc.items()}})
        print(rows[-1], flush=True)
    with open(out / "step_cache.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows[1:], out / "step_cache.png", args.steps)


def plot(rows, path: Path, steps: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    # thresholds that skip nothing (infinite PSNR) or skip exactly what a lower one did are not new points
    rows = [r for r in rows if float(r["skipped_share"]) > 0]
    rows = [r for i, r in enumerate(rows) if i == 0 or r["skipped_share"] != rows[i - 1]["skipped_share"]]
    share = [float(r["skipped_share"]) for r in rows]
    ax.plot(share, [float(r["psnr_db"]) for r in rows], "o-")
    for r in rows:
        ax.annotate(f"threshold {r['threshold']}, accuracy {float(r['acc_all']):.2f}",
                    (float(r["skipped_share"]), float(r["psnr_db"])), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel(f"share of the {steps} steps whose blocks were skipped")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("step caching on the mini-world model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
