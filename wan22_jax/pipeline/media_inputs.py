"""Image and video input files of the conditioned pipelines (S2V's reference image and pose video, Animate's
reference image and driving videos), checked and decoded before any model runs.

Each reader takes a `label`: how its errors name the file (the caller's words for it and the path, e.g.
"reference image /data/ref.png"), so that every pipeline keeps its own wording while the checks are one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wan22_jax.errors import InputFileError
from wan22_jax.video import read_video


def existing_file(path: str | os.PathLike, label: str) -> Path:
    """`path` as a Path; InputFileError "<label>: no such file" unless it is a file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{label}: no such file")
    return path


def read_image_file(path: str | os.PathLike, label: str) -> np.ndarray:
    """An image file decoded to RGB.

    Args:
      path: the image file (any format PIL reads). label: how errors name it.
    Returns:
      [H, W, 3] uint8.
    Raises:
      InputFileError: the file is missing or not a readable image.
    """
    path = existing_file(path, label)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise InputFileError(f"{label}: not a readable image ({e})") from e


def read_video_file(path: str | os.PathLike, label: str) -> np.ndarray:
    """Every frame of a video file.

    Args:
      path: the video file (any format ffmpeg reads). label: how errors name it.
    Returns:
      [T, H, W, 3] uint8, T >= 1.
    Raises:
      InputFileError: the file is missing, not a readable video or holds no frames.
    """
    path = existing_file(path, label)
    try:
        frames = read_video(path)
    except (OSError, RuntimeError, ValueError, StopIteration) as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__  # ffmpeg's last line
        raise InputFileError(f"{label}: not a readable video ({detail})") from e
    if frames.shape[0] == 0:
        raise InputFileError(f"{label}: the video holds no frames")
    return frames


__all__ = ["existing_file", "read_image_file", "read_video_file"]
