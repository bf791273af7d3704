"""The small per-task pieces of the one pipeline: sizes, image preprocessing, conditioning and timestep maps.

Everything task-specific in the official text2video.py / image2video.py / textimage2video.py is one of these
functions; the sampling loop itself is shared (pipeline.py).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from wan22_jax.configs import TaskConfig
from wan22_jax.errors import InputError


def check_frames(num_frames: int, stride_t: int = 4) -> None:
    """Raises InputError unless num_frames is an integer 1 + stride_t * k (k >= 0)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise InputError(f"num_frames={num_frames!r}: must be an integer 1 + {stride_t}k (e.g. 81 or 121)")
    if num_frames < 1 or (num_frames - 1) % stride_t:
        raise InputError(f"num_frames={num_frames}: must be 1 + {stride_t}k (e.g. 81 or 121); the causal VAE "
                         f"encodes frame 0 alone and then groups of {stride_t}")


def check_size(width: int, height: int, multiple: int) -> None:
    """Raises InputError unless width and height are positive integer multiples of `multiple`."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InputError(f"{name}={v!r}: must be an integer number of pixels")
    if width < multiple or height < multiple or width % multiple or height % multiple:
        raise InputError(f"size {width}x{height} (WxH): width and height must be positive multiples of "
                         f"{multiple} (VAE stride x DiT patch)")


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """Official `best_output_size`: the (w, h) multiple of (dw, dh) with area <= expected_area whose aspect
    ratio is closest to w/h, trying width-first and height-first rounding."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)
    oh1 = int(expected_area / ow1 // dh * dh)
    ratio1 = ow1 / oh1
    oh2 = int(oh // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    ratio2 = ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def to_image_array(image) -> np.ndarray:
    """A PIL image, or an [H, W, 3] uint8 array, or an [H, W, 3] float array in [0, 1] -> [H, W, 3] uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"image has shape {arr.shape}; expected [H, W, 3] (RGB)")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1:
        return (arr * 255).round().astype(np.uint8)
    raise InputError(f"image of dtype {arr.dtype} must be uint8 or float in [0, 1]")


def normalize_image(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [3, H, W] float32 in [-1, 1] (to_tensor, then (x - 0.5) / 0.5 as official)."""
    return (np.moveaxis(img, -1, 0).astype(np.float32) / 255.0 - 0.5) / 0.5


def ti2v_image(img: np.ndarray, max_area: int, multiple: int) -> np.ndarray:
    """ti2v: size by best_output_size, LANCZOS resize to cover, centre crop (official textimage2video.i2v)."""
    ih, iw = img.shape[:2]
    ow, oh = best_output_size(iw, ih, multiple, multiple, max_area)
    scale = max(ow / iw, oh / ih)
    pil = Image.fromarray(img).resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (pil.width - ow) // 2, (pil.height - oh) // 2
    return np.asarray(pil.crop((x1, y1, x1 + ow, y1 + oh)))


def i2v_size(img_h: int, img_w: int, max_area: int, stride: int, patch: int) -> tuple[int, int]:
    """i2v-A14B: target (h, w) from max_area and the image's aspect ratio (official image2video.generate)."""
    aspect = img_h / img_w
    lat_h = round(np.sqrt(max_area * aspect) // stride // patch * patch)
    lat_w = round(np.sqrt(max_area / aspect) // stride // patch * patch)
    return lat_h * stride, lat_w * stride


def i2v_image(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """i2v-A14B resizes with torch bicubic (no antialias); PIL bicubic is used here, identical when the image is
    already at the target size and within bicubic-kernel differences otherwise."""
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def i2v_mask(latent_frames: int, lat_h: int, lat_w: int) -> np.ndarray:
    """[4, T', h, w] first-frame mask of i2v-A14B: ones on latent frame 0 (its 4 sub-frames), zeros after."""
    m = np.zeros((4, latent_frames, lat_h, lat_w), np.float32)
    m[:, 0] = 1.0
    return m


def frame_timestep_mask(task: TaskConfig, latent_frames: int, has_image: bool) -> np.ndarray | None:
    """Per-latent-frame multiplier of t (ti2v with an image: 0 on the clean first frame); None = scalar t."""
    if task.mode == "ti2v" and has_image:
        m = np.ones(latent_frames, np.float32)
        m[0] = 0.0
        return m
    return None


def latent_shape(z_dim: int, num_frames: int, height: int, width: int, stride: tuple[int, int, int]):
    return (z_dim, (num_frames - 1) // stride[0] + 1, height // stride[1], width // stride[2])


def seq_len(shape: tuple[int, int, int, int], patch: tuple[int, int, int]) -> int:
    return math.prod(s // p for s, p in zip(shape[1:], patch))
