"""Prompt following of a trained mini-world DiT, measured by the deterministic detector.

    python experiments/mini_world/evaluate.py CONFIG.json [--step N] [--seeds 2] [--out experiments/mini_world]

For every held-out scene (colour x shape x direction combinations never seen in training, every background)
and a sample of training scenes, generates `--seeds` videos and checks colour, shape and direction. Writes
results.csv (one row per video), accuracy.csv (per split and attribute) and strips_<split>.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wan22_jax.data.detector import detect
from wan22_jax.data.mini_world import held_out_scenes, to_uint8_frames, train_scenes
from wan22_jax.training.sampling import TrainedModel


def strip(videos, rows: int = 8, scale: int = 3) -> Image.Image:
    """One row per video: its frames side by side."""
    frames = [np.concatenate(list(to_uint8_frames(v)), axis=1) for v in videos[:rows]]
    img = np.concatenate([np.pad(f, ((1, 1), (0, 0), (0, 0)), constant_values=255) for f in frames], axis=0)
    return Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="experiments/mini_world")
    args = ap.parse_args()
    model = TrainedModel(json.loads(Path(args.config).read_text()), args.step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = [train_scenes()[i] for i in rng.choice(len(train_scenes()), 24, replace=False)]
    rows, acc = [], []
    t0 = time.perf_counter()
    for split, scenes in (("held_out", held_out_scenes()), ("train", train)):
        videos_all = []
        for seed in range(args.seeds):
            videos = model.generate([s.prompt for s in scenes], seed=seed, steps=args.steps,
                                    guidance=args.guidance)
            videos_all += list(videos)
            for s, v in zip(scenes, videos):
                d = detect(to_uint8_frames(v))
                m = d.matches(s)
                rows.append({"split": split, "seed": seed, "prompt": s.prompt, "colour": d.colour, "shape": d.shape,
                             "direction": d.direction, "fill_ratio": f"{d.fill_ratio:.3f}",
                             **{f"ok_{k}": int(v_) for k, v_ in m.items()}, "ok_all": int(all(m.values()))})
        strip(videos_all[:: max(1, len(videos_all) // 8)]).save(out / f"strips_{split}.png")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out / "accuracy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "step", "videos", "colour", "shape", "direction", "all"])
        for split in ("held_out", "train"):
            r = [x for x in rows if x["split"] == split]
            vals = [np.mean([x[f"ok_{k}"] for x in r]) for k in ("colour", "shape", "direction", "all")]
            w.writerow([split, model.step, len(r), *(f"{v:.3f}" for v in vals)])
            print(f"{split}: {len(r)} videos at step {model.step}: colour {vals[0]:.2f} shape {vals[1]:.2f} "
                  f"direction {vals[2]:.2f} all {vals[3]:.2f}")
    print(f"evaluation took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
