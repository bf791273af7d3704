"""Prompt following of a mini-world checkpoint through the real pipeline, read by the deterministic detector, per
language.

    python experiments/mini_world/evaluate.py [--checkpoint FOLDER] [--languages en,ja] [--seeds 4] [--steps 20]
        [--guidance 4] [--solver unipc] [--out experiments/mini_world/results]

Every held-out scene (colour x shape x direction combinations never trained on, each background) and as many
training scenes, `--seeds` videos each, once per language (the same scenes and seeds: the English prompt "a red
bar moving left on a black background" and the Japanese "黒い背景の上を左へ動く赤い棒"). Writes results.csv (a row
per video), accuracy.csv (per language and split) and strips_<split>_<language>.png (every sixth video: frames
left to right).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path

import mediapy
import numpy as np

from wan22_jax.data.mini_world import LANGUAGES, Scene, held_out_scenes, train_scenes
from wan22_jax.data.prompt_following import accuracy, detect_rows, strip_image
from wan22_jax.pipeline import Wan22Pipeline


def generate_rows(pipe, scenes: Sequence[Scene], language: str, *, seeds: Sequence[int], batch: int = 24,
                  **call) -> tuple[list[dict], list[np.ndarray]]:
    """Generates every scene's caption in `language` once per seed (batched) and reads each video.

    Returns (rows: one per video, with the detector's reading, the English prompt and the caption asked; videos
    as [T, H, W, 3] uint8)."""
    rows, videos = [], []
    for seed in seeds:
        for start in range(0, len(scenes), batch):
            chunk = list(scenes[start:start + batch])
            out = pipe(prompt=[s.caption(language) for s in chunk], seed=seed, **call)
            frames = [v.frames for v in out.videos]
            rows += [{**r, "caption": s.caption(language)}
                     for r, s in zip(detect_rows(frames, chunk, language=language, seed=seed), chunk)]
            videos += frames
    return rows, videos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None, help="default: the embedded model")
    ap.add_argument("--languages", default=",".join(LANGUAGES))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--solver", default="unipc")
    ap.add_argument("--out", default="experiments/mini_world/results")
    args = ap.parse_args()
    pipe = Wan22Pipeline.from_pretrained(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held = held_out_scenes()
    rng = np.random.default_rng(0)
    train = [train_scenes()[i] for i in rng.choice(len(train_scenes()), len(held), replace=False)]
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, solver=args.solver)
    t0 = time.perf_counter()
    all_rows, summary = [], []
    for language in args.languages.split(","):
        for split, scenes in (("held_out", held), ("train", train)):
            rows, videos = generate_rows(pipe, scenes, language, seeds=range(args.seeds), **call)
            all_rows += [{"split": split, **r} for r in rows]
            mediapy.write_image(str(out / f"strips_{split}_{language}.png"), strip_image(videos[::6][:8], scale=2))
            acc = accuracy(rows)
            summary.append({"language": language, "split": split, "videos": len(rows),
                            **{k: f"{v:.3f}" for k, v in acc.items()}})
            print(f"{language} {split}: {len(rows)} videos: " + " ".join(f"{k} {v:.2f}" for k, v in acc.items()),
                  flush=True)
    for name, table in (("results.csv", all_rows), ("accuracy.csv", summary)):
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, list(table[0]))
            w.writeheader()
            w.writerows(table)
    print(f"evaluation took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
