"""Generated videos: uint8 frames, mp4 writing (ffmpeg shipped by imageio-ffmpeg), reading back, notebook display."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import imageio_ffmpeg
import mediapy
import numpy as np

from wan22_jax.errors import InputError
from wan22_jax.io.atomic import atomic_path

# mediapy calls `ffmpeg` from PATH unless told otherwise; the binary inside imageio-ffmpeg needs no system install.
mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())


def to_uint8(video: np.ndarray) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, truncating like the official save_video (x+1)/2*255."""
    video = np.clip(np.asarray(video, np.float32), -1.0, 1.0)
    frames = ((video + 1.0) / 2.0 * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(frames, 0, -1))


@dataclasses.dataclass(frozen=True)
class Video:
    """frames: [F, H, W, 3] uint8; fps: the task's default frame rate."""

    frames: np.ndarray
    fps: int = 16

    def save(self, path: str | os.PathLike, fps: int | None = None, *, quality: int = 8) -> Path:
        """Writes an H.264 mp4 (libx264, imageio quality 8 like the official writer); atomic."""
        path = Path(path)
        if path.suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm", ".gif"):
            raise InputError(f"{path}: unsupported video extension {path.suffix!r} (use .mp4)")
        with atomic_path(path) as tmp:
            if path.suffix.lower() == ".gif":
                mediapy.write_video(tmp, self.frames, fps=fps or self.fps, codec="gif")
            else:
                # crf ~ imageio's quality 8 of 10; yuv420p keeps the file playable everywhere
                crf = int(round(51 - quality * 51 / 10))
                mediapy.write_video(tmp, self.frames, fps=fps or self.fps, crf=crf)
        return path

    def _repr_html_(self):  # inline display in notebooks
        return mediapy.show_video(self.frames, fps=self.fps, return_html=True)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.frames.shape


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Reads a video file to [F, H, W, 3] uint8.

    mediapy's reader passes `-vsync`, which the ffmpeg 9 shipped by imageio-ffmpeg no longer accepts, so frames
    are read through imageio-ffmpeg's own reader.
    """
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


@dataclasses.dataclass(frozen=True)
class PipelineOutput:
    """What a pipeline call returns.

    videos: one `Video` (uint8 frames) per prompt. video: [B, 3, F, H, W] float in [-1, 1] before quantisation.
    latents: [B, z, F', h, w] final latents. timesteps: [N] model timesteps of the schedule.
    trajectory: with return_trajectory, {"samples": [N + 1, B, ...], "velocities": [N, B, ...]} (guided).
    cond_latent: the VAE latent of the conditioning image, if any.
    skipped_steps: with a step cache, how many model evaluations skipped the blocks.
    denoise_s: wall time of the denoising loop in seconds (compilation included on a first call).
    """

    videos: list[Video]
    video: np.ndarray | None = None
    latents: np.ndarray | None = None
    timesteps: np.ndarray | None = None
    trajectory: dict | None = None
    cond_latent: np.ndarray | None = None
    skipped_steps: int | None = None  # model evaluations the step cache skipped (all experts), if one was used
    denoise_s: float | None = None
