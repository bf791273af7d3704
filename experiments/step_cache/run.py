"""Quality cost of step caching on the trained mini-world model, for both caches: `StepCache` (TeaCache-style,
decides from the input's change) and `MagCache` (decides from a calibrated residual-magnitude curve). For several
thresholds each: the share of skipped block evaluations, the PSNR of the decoded videos against the uncached run
from the same noise, the detector's prompt-following accuracy, and the denoising time.

    python experiments/step_cache/run.py [--checkpoint FOLDER] [--steps 50] [--out experiments/step_cache/results]

All 24 held-out prompts, seed 0, UniPC, the task's shift and guidance; both caches allow `--max-skips` skips in
a row. MagCache is calibrated once, on one prompt that is not among the 24 and another seed, and keeps the first
`--retention` share of the steps. Writes step_cache.csv, mag_ratios.json and step_cache.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from wan22_jax.data.mini_world import held_out_scenes
from wan22_jax.data.prompt_following import accuracy, detect_rows
from wan22_jax.models.mag_cache import MagCache
from wan22_jax.models.step_cache import StepCache
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.pipeline.mag_calibration import calibrate_mag_cache

THRESHOLDS = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
MAG_THRESHOLDS = [0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.4]
CALIBRATION_PROMPT = "a green circle moving left on a white background"  # a training-set scene


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
    ap.add_argument("--retention", type=float, default=0.2)
    ap.add_argument("--out", default="experiments/step_cache/results")
    args = ap.parse_args()
    pipe = Wan22Pipeline.from_pretrained(args.checkpoint)
    scenes = held_out_scenes()
    call = dict(prompt=[s.prompt for s in scenes], num_inference_steps=args.steps, seed=0, progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref, ref_s = timed(pipe, **call)
    ref_acc = accuracy(detect_rows([v.frames for v in ref.videos], scenes))
    rows = [{"cache": "none", "threshold": "none", "skipped_share": 0.0, "psnr_db": "inf",
             "denoise_s": round(ref_s, 3), **{f"acc_{k}": round(v, 3) for k, v in ref_acc.items()}}]
    print(rows[-1], flush=True)
    assert CALIBRATION_PROMPT not in call["prompt"]
    ratios = calibrate_mag_cache(pipe, prompt=CALIBRATION_PROMPT, num_inference_steps=args.steps, seed=1)
    (out / "mag_ratios.json").write_text(json.dumps([round(r, 5) for r in ratios]) + "\n")
    caches = [("StepCache", th, StepCache(threshold=th, max_skips=args.max_skips)) for th in THRESHOLDS]
    caches += [("MagCache", th, MagCache(ratios, threshold=th, max_skips=args.max_skips, retention=args.retention))
               for th in MAG_THRESHOLDS]
    for name, th, cache in caches:
        res, secs = timed(pipe, step_cache=cache, **call)
        acc = accuracy(detect_rows([v.frames for v in res.videos], scenes))
        rows.append({"cache": name, "threshold": th, "skipped_share": round(res.skipped_steps / args.steps, 3),
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
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, style in (("StepCache", "o-"), ("MagCache", "s-")):
        # thresholds that skip nothing (infinite PSNR) or skip exactly what a lower one did are not new points
        sel = [r for r in rows if r["cache"] == name and float(r["skipped_share"]) > 0]
        sel = [r for i, r in enumerate(sel) if i == 0 or r["skipped_share"] != sel[i - 1]["skipped_share"]]
        ax.plot([float(r["skipped_share"]) for r in sel], [float(r["psnr_db"]) for r in sel], style,
                label=f"{name} (TeaCache-style)" if name == "StepCache" else name)
        for r in sel:
            ax.annotate(f"{r['threshold']}, acc {float(r['acc_all']):.2f}",
                        (float(r["skipped_share"]), float(r["psnr_db"])), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xlabel(f"share of the {steps} steps whose blocks were skipped")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("step caching on the mini-world model (labels: threshold, detector accuracy)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
