"""The mini-world written as files, the way a user's dataset looks: one mp4 per clip and a JSONL manifest that
captions each clip in English and in Japanese (what `VideoDataset` and `wan22 cache` read).

    out/
      train/00000.mp4 ...      training clips (the colour x shape x direction combinations trained on)
      held_out/00000.mp4 ...   clips of the held-out combinations (evaluation only)
      train.jsonl              {"path": "train/00000.mp4", "caption": "a red bar moving left on a black
      held_out.jsonl            background", "language": "en"}, then the same path with "黒い背景の上を左へ動く赤い棒"

A file listed twice is two samples (one per caption). Clip `i` of a split is `MiniWorld(split=..., seed=...).clip(i)`,
written as H.264 (yuv420p, CRF 10) at 8 fps: what ffmpeg decodes back is within about one level of 255 of the
render on average, and the detector reads it the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from wan22_jax.data.detector import detect
from wan22_jax.data.mini_world import LANGUAGES, MiniWorld, to_uint8_frames
from wan22_jax.errors import InputError
from wan22_jax.io.atomic import atomic_path
from wan22_jax.video import read_video

FPS = 8
CRF = 10


def write_mp4(path: str | os.PathLike, frames: np.ndarray, *, fps: int = FPS, crf: int = CRF) -> Path:
    """Writes [T, H, W, 3] uint8 frames as an H.264 mp4 (yuv420p: plays anywhere; H and W even), atomically.

    Returns the path."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise InputError(f"frames {h}x{w}: yuv420p needs even sides")
    path = Path(path)
    with atomic_path(path) as tmp:
        out = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                          quality=None, output_params=["-crf", str(crf), "-f", "mp4"],
                                          macro_block_size=2, ffmpeg_log_level="error")
        out.send(None)
        for f in frames:
            out.send(np.ascontiguousarray(f, np.uint8))
        out.close()
    return path


def write_split(out: str | os.PathLike, split: str, clips: int, *, seed: int = 0, height: int = 64,
                width: int = 64, frames: int = 5, check_every: int = 1) -> dict:
    """Writes `clips` clips of `split` to out/<split>/ and the manifest out/<split>.jsonl (a clip already on disk
    is kept, so an interrupted run continues).

    Args:
      out: the folder. split: "train", "held_out" or "all" (MiniWorld's). clips: how many.
      seed, height, width, frames: the clips (MiniWorld's arguments).
      check_every: decode every n-th file back and read it with the detector.
    Returns:
      {"clips", "checked", "detector_ok": decoded files read right on all three attributes, "max_abs_error":
       the largest mean |decoded - render| of a checked file, in levels of 255}.
    """
    out = Path(out)
    world = MiniWorld(height=height, width=width, frames=frames, split=split, seed=seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    rows, checked, ok, worst = [], 0, 0, 0.0
    for i in range(clips):
        clip = world.clip(i)
        rel = f"{split}/{i:05d}.mp4"
        render = to_uint8_frames(clip.video)
        if not (out / rel).is_file():
            write_mp4(out / rel, render)
        if check_every and i % check_every == 0:
            back = read_video(out / rel)
            checked += 1
            if back.shape == render.shape:
                worst = max(worst, float(np.abs(back.astype(np.int16) - render).mean()))
                ok += all(detect(back).matches(clip.scene).values())
        rows += [{"path": rel, "caption": clip.scene.caption(lang), "language": lang} for lang in LANGUAGES]
    with atomic_path(out / f"{split}.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"clips": clips, "checked": checked, "detector_ok": ok, "max_abs_error": worst}
