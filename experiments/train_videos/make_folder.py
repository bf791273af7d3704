"""A folder of captioned mp4 files from the mini-world, to train on as a user would on their own clips.

    python experiments/train_videos/make_folder.py OUT_DIR [--clips 40] [--frames 5] [--seed 0]

Writes OUT_DIR/clip_000.mp4 + clip_000.txt (its caption) ..., two thirds of them 64x64 and one third 64 high x
96 wide (so `wan22 cache` makes two resolution buckets), plus two bad files that a run must report and survive:
broken.mp4 (not a video, with a caption) and no_caption.mp4 (a good video without its .txt).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wan22_jax.data.mini_world import MiniWorld, to_uint8_frames
from wan22_jax.video import Video

FPS = 4  # the default model's task frame rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    square = MiniWorld(height=64, width=64, frames=args.frames, split="all", seed=args.seed)
    wide = MiniWorld(height=64, width=96, frames=args.frames, split="all", seed=args.seed + 1)
    for i in range(args.clips):
        clip = (wide if i % 3 == 2 else square).clip(i)
        Video(to_uint8_frames(clip.video), fps=FPS).save(out / f"clip_{i:03d}.mp4")
        (out / f"clip_{i:03d}.txt").write_text(clip.prompt + "\n", encoding="utf-8")
    # the two bad files
    (out / "broken.mp4").write_bytes(np.random.default_rng(args.seed).bytes(2048))
    (out / "broken.txt").write_text("a file that is not a video\n", encoding="utf-8")
    Video(to_uint8_frames(square.clip(args.clips).video), fps=FPS).save(out / "no_caption.mp4")
    print(f"{args.clips} captioned clips and 2 bad files in {out}")


if __name__ == "__main__":
    main()
