"""Resolution and frame buckets for training on real videos.

A batch of latents is one array, so every sample of a batch must have the same frame count and size. Samples are
sorted into buckets: a frame count from a fixed list (each 1 + 4k, what the VAE encodes) and a (height, width)
whose sides are multiples of the model's stride (VAE spatial stride x DiT patch) with about `area` pixels, the one
whose aspect ratio is nearest the source's. A sample is resized to cover its bucket, aspect ratio kept, then
centre-cropped; a clip is sampled at a chosen frame rate from its first frame.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from wan22_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True, order=True)
class Bucket:
    """frames x height x width of the pixels a sample is cut to."""

    frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BucketConfig:
    """How samples are cut.

    area: target pixels per frame (480 * 832 for the 480p tasks); a bucket has at most this many.
    stride: every side is a multiple of it: the VAE's spatial stride times the DiT's patch (16 x 2 = 32 for
      Wan2.2 TI2V-5B, 8 x 2 = 16 for A14B).
    max_aspect: the longest side of a bucket is at most this many times its shortest.
    frames: allowed frame counts of video clips, each 1 + 4k; a clip gets the largest one its video can fill.
    fps: clips are sampled at this frame rate (a 30 fps source at fps=16 keeps about every other frame); None
      keeps every source frame.
    images: still images become 1-frame samples (Wan trains on images as 1-frame videos).
    """

    area: int = 480 * 832
    stride: int = 32
    max_aspect: float = 2.0
    frames: tuple[int, ...] = (81,)
    fps: float | None = 16.0
    images: bool = True

    def __post_init__(self):
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ConfigError(f"buckets.stride={self.stride!r}: must be a whole number >= 1")
        if isinstance(self.area, bool) or not isinstance(self.area, int) or self.area < self.stride ** 2:
            raise ConfigError(f"buckets.area={self.area!r}: must be a whole number of pixels >= stride^2 "
                              f"({self.stride ** 2})")
        if not isinstance(self.max_aspect, (int, float)) or not self.max_aspect >= 1:
            raise ConfigError(f"buckets.max_aspect={self.max_aspect!r}: must be a number >= 1")
        frames = tuple(self.frames) if isinstance(self.frames, (list, tuple)) else None
        if not frames or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 or (f - 1) % 4 for f in frames):
            raise ConfigError(f"buckets.frames={self.frames!r}: must be a non-empty list of frame counts 1 + 4k "
                              "(1, 5, 9, ..., 81)")
        object.__setattr__(self, "frames", tuple(sorted(set(frames))))
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float))
                                     or not 0 < self.fps <= 240):
            raise ConfigError(f"buckets.fps={self.fps!r}: must be null or a frame rate in (0, 240]")
        if not isinstance(self.images, bool):
            raise ConfigError(f"buckets.images={self.images!r}: must be true or false")


def resolutions(cfg: BucketConfig) -> list[tuple[int, int]]:
    """Every (height, width) bucket of `cfg`: for each height (a multiple of the stride) the widest width with
    height * width <= area, kept when the aspect ratio is within max_aspect; sorted by height / width."""
    s = cfg.stride
    out = set()
    for h in range(s, cfg.area // s + 1, s):
        w = (cfg.area // h) // s * s
        if w >= s and max(h, w) <= cfg.max_aspect * min(h, w):
            out.add((h, w))
    if not out:  # max_aspect too tight for the stride grid: the square-most bucket
        side = max(s, math.isqrt(cfg.area) // s * s)
        out.add((side, side))
    return sorted(out, key=lambda hw: hw[0] / hw[1])


def nearest_resolution(height: int, width: int, choices: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) to height / width; ties go to the larger one."""
    if height < 1 or width < 1:
        raise ValueError(f"empty frame {height}x{width}")
    a = math.log(height / width)
    return min(choices, key=lambda hw: (abs(math.log(hw[0] / hw[1]) - a), -hw[0] * hw[1]))


def frame_bucket(available: int, cfg: BucketConfig) -> int | None:
    """The largest allowed frame count <= available (frames the clip can fill at cfg.fps), or None."""
    fits = [f for f in cfg.frames if f <= available]
    return fits[-1] if fits else None


def source_indices(count: int, source_fps: float | None, fps: float | None) -> np.ndarray:
    """Source frame indices of `count` output frames sampled at `fps` from a video at `source_fps`, starting at
    frame 0: output frame i shows the source frame on screen at time i / fps. Without either rate (an unknown
    source rate, or fps=None) every source frame is kept."""
    i = np.arange(count)
    if fps is None or not source_fps or source_fps <= 0:
        return i
    return np.floor(i * (source_fps / fps) + 1e-6).astype(np.int64)


def cover_crop(height: int, width: int, out_h: int, out_w: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Resize size and crop box that cut a height x width frame to out_h x out_w with its aspect ratio kept:
    scale to cover the bucket, then take the centre.

    Returns:
      (resized (h, w), crop box (top, left, bottom, right) in the resized frame).
    """
    scale = max(out_h / height, out_w / width)
    rh, rw = max(out_h, round(height * scale)), max(out_w, round(width * scale))
    top, left = (rh - out_h) // 2, (rw - out_w) // 2
    return (rh, rw), (top, left, top + out_h, left + out_w)
