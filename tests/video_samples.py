"""A tiny folder of training files for the data, cache and loader tests: mini-world clips written as mp4 with
English and Japanese captions, a still image, and three bad files (corrupt, too few frames, no caption)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wan22_jax.data.buckets import BucketConfig
from wan22_jax.data.mini_world import MiniWorld, to_uint8_frames
from wan22_jax.video import Video

# 16 = the embedded mini-world VAE's stride (8) x the DiT patch (2)
TINY_BUCKETS = BucketConfig(area=32 * 48, stride=16, frames=(5, 9, 17), fps=16)

GOOD = {  # name: (height, width, frames, caption)
    "en.mp4": (32, 48, 17, "a red circle moving left on a black background"),
    "ja.mp4": (48, 32, 9, "黒い背景の上を左に動く赤い円"),
    "sub/wide.mp4": (32, 64, 12, "a blue bar moving up"),
}
BAD = {"short.mp4": "too few frames", "corrupt.mp4": "unreadable", "nocap.mp4": "missing caption"}


def _clip(height: int, width: int, frames: int, seed: int) -> np.ndarray:
    return to_uint8_frames(MiniWorld(height=height, width=width, frames=frames, seed=seed).clip(0).video)


def write_samples(root: Path, *, extra: int = 0) -> Path:
    """Writes the files under `root` (plus `extra` more good 32x48 clips of 9 frames) and returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    good = dict(GOOD)
    for i in range(extra):
        good[f"more/clip{i:02d}.mp4"] = (32, 48, 9, f"a green pillar moving right number {i}")
    for i, (name, (h, w, t, caption)) in enumerate(good.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Video(_clip(h, w, t, seed=i)).save(root / name, fps=16)
        (root / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    Image.fromarray(_clip(40, 40, 1, seed=99)[0]).save(root / "still.png")
    (root / "still.txt").write_text("  a yellow &amp; white\tsquare  ", encoding="utf-8")
    Video(_clip(32, 48, 3, seed=7)).save(root / "short.mp4", fps=16)
    (root / "short.txt").write_text("too short", encoding="utf-8")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (root / "corrupt.txt").write_text("broken", encoding="utf-8")
    Video(_clip(32, 48, 9, seed=8)).save(root / "nocap.mp4", fps=16)
    return root
