"""Prompt following of a pipeline on mini-world prompts, read by the deterministic detector: the measurement
behind the shipped model's accuracy, the sampler study and the LoRA test."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from wan22_jax.data.detector import detect
from wan22_jax.data.mini_world import Scene

ATTRIBUTES = ("colour", "shape", "direction")


def detect_rows(frames: Sequence[np.ndarray], scenes: Sequence[Scene], **extra: Any) -> list[dict]:
    """One row per video: what the detector read and whether each attribute matches its scene.

    frames: videos as [T, H, W, 3] uint8 (`Video.frames`).
    """
    rows = []
    for f, s in zip(frames, scenes, strict=True):
        d = detect(f)
        ok = d.matches(s)
        rows.append({**extra, "prompt": s.prompt, "colour": d.colour, "shape": d.shape, "direction": d.direction,
                     "fill_ratio": round(d.fill_ratio, 3), **{f"ok_{k}": int(v) for k, v in ok.items()},
                     "ok_all": int(all(ok.values()))})
    return rows


def generate_rows(pipe, scenes: Sequence[Scene], *, seeds: Sequence[int] = (0,), batch: int = 24,
                  **call: Any) -> tuple[list[dict], list[np.ndarray]]:
    """Generates every scene's prompt once per seed (batched) and reads each video.

    call: extra `pipe(...)` arguments (num_inference_steps, guidance_scale, solver, shift, ...).
    Returns (rows, videos as [T, H, W, 3] uint8).
    """
    rows, videos = [], []
    for seed in seeds:
        for start in range(0, len(scenes), batch):
            chunk = list(scenes[start:start + batch])
            out = pipe(prompt=[s.prompt for s in chunk], seed=seed, **call)
            frames = [v.frames for v in out.videos]
            rows += detect_rows(frames, chunk, seed=seed)
            videos += frames
    return rows, videos


def accuracy(rows: Sequence[dict]) -> dict[str, float]:
    """Fraction of videos right on each attribute, and on all three at once."""
    if not rows:
        return {k: float("nan") for k in (*ATTRIBUTES, "all")}
    return {k: float(np.mean([r[f"ok_{k}"] for r in rows])) for k in (*ATTRIBUTES, "all")}


def strip_image(videos: Sequence[np.ndarray], *, scale: int = 3) -> np.ndarray:
    """One row per video, frames left to right, white separators; [H', W', 3] uint8 (nearest upscaling)."""
    rows = [np.pad(np.concatenate(list(v), axis=1), ((1, 1), (0, 0), (0, 0)), constant_values=255)
            for v in videos]
    img = np.concatenate(rows, axis=0)
    return img.repeat(scale, axis=0).repeat(scale, axis=1)
