"""The inputs of an S2V call, read and checked before any model runs (official `WanS2V` preprocessing): the output
size (`get_size_less_than_area`: multiples of 64), the reference image and pose frames resized and centre-cropped
to it, the audio read at 16 kHz, the number of clips the audio covers, and whether a folder is an S2V release."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import imageio_ffmpeg
import numpy as np
import soxr
from PIL import Image

from wan22_jax.conditioning import to_image_array
from wan22_jax.errors import InputError, InputFileError
from wan22_jax.models.s2v.audio_encoder import SAMPLE_RATE, VIDEO_RATE, WAV2VEC_FPS, interpolation_frames, load_audio
from wan22_jax.pipeline.media_inputs import existing_file, read_image_file

SIZE_DIVISOR = 64  # official get_size_less_than_area pads / rounds to multiples of 64 (also the frame packer's)


# ------------------------------------------------------------------------------------------------ sizes / frames
def size_less_than_area(height: int, width: int, target_area: int = 1024 * 704, divisor: int = SIZE_DIVISOR
                        ) -> tuple[int, int]:
    """Official `WanS2V.get_size_less_than_area`: the (height, width), multiples of 64, with the largest area <=
    target_area for an image of (height, width) scaled down (or padded) to fit."""
    if height * width <= target_area:
        max_upper_area, min_scale, max_scale = target_area, 0.1, 1.0
    else:
        max_upper_area = target_area
        d = divisor - 1
        b = d * (height + width)
        a = height * width
        c = d ** 2 - max_upper_area
        min_scale = (-b + math.sqrt(b ** 2 - 2 * a * c)) / (2 * a)
        max_scale = math.sqrt(max_upper_area / (height * width))
    for i in range(100):
        scale = max_scale - (max_scale - min_scale) * i / 100
        new_h, new_w = int(height * scale), int(width * scale)
        padded_h, padded_w = new_h + (64 - new_h % 64) % 64, new_w + (64 - new_w % 64) % 64
        if padded_h * padded_w <= max_upper_area:
            return padded_h, padded_w
    aspect = width / height
    target_w = int((target_area * aspect) ** 0.5 // divisor * divisor)
    target_h = int((target_area / aspect) ** 0.5 // divisor * divisor)
    if target_w >= width or target_h >= height:
        target_w, target_h = int(width // divisor * divisor), int(height // divisor * divisor)
    return target_h, target_w


def resize_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision Resize(min(height, width)) (shorter side, bilinear, on a PIL image) then CenterCrop((height,
    width)) (zero padding where the resized image is smaller), as the official code prepares the reference
    image. [h, w, 3] uint8 -> [height, width, 3] uint8."""
    ih, iw = img.shape[:2]
    short = min(height, width)
    if (ih, iw) != (height, width):
        if ih <= iw:
            nh, nw = short, int(short * iw / ih)
        else:
            nh, nw = int(short * ih / iw), short
        if (nh, nw) != (ih, iw):
            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    ih, iw = img.shape[:2]
    if ih < height or iw < width:  # torchvision pads (fill 0) to the crop size first
        ph, pw = max(height - ih, 0), max(width - iw, 0)
        img = np.pad(img, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        ih, iw = img.shape[:2]
    top, left = int(round((ih - height) / 2.0)), int(round((iw - width) / 2.0))
    return np.ascontiguousarray(img[top:top + height, left:left + width])


def clip_count(n_samples: int, infer_frames: int, wav2vec_frames: Callable[[int], int], fps: int = 16) -> int:
    """The official num_repeat of an audio track of n_samples at 16 kHz: int(T30 / (infer_frames * 30 / fps)) + 1,
    T30 the 30 fps audio frames (from the wav2vec2 frame count)."""
    t30 = interpolation_frames(wav2vec_frames(n_samples), WAV2VEC_FPS, VIDEO_RATE)
    return int(t30 / (infer_frames * (VIDEO_RATE / fps))) + 1



def is_s2v_folder(path) -> bool:
    """Whether `path` is an S2V release folder (its config.json names WanModel_S2V)."""
    if path is None or not Path(path).is_dir() or not (Path(path) / "config.json").is_file():
        return False
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("_class_name") == "WanModel_S2V"
    except (ValueError, AttributeError, OSError):
        return False  # the regular loader names a corrupt config.json


def read_image(image, what: str = "image") -> np.ndarray:
    """A path, PIL image or [H, W, 3] array -> [H, W, 3] uint8; a missing or unreadable file is named."""
    if image is None:
        raise InputError(f"{what} is required: S2V animates a reference image (a path, PIL image or [H, W, 3] "
                         "array)")
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(image, f"{what} {str(image)!r}")
    return to_image_array(image)


def read_waveform(audio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """An audio file path (any format libsndfile reads) or mono samples at `sample_rate` -> [N] float32 at 16 kHz
    (files as librosa.load reads them, arrays resampled with soxr)."""
    if audio is None:
        raise InputError("audio is required: a path to a speech/song file (wav, flac, ogg, mp3) or mono samples")
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    x = np.asarray(audio)
    if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"audio array has shape {x.shape} / dtype {x.dtype}; expected mono float samples [N]")
    if not np.isfinite(x).all():
        raise InputError("audio array holds NaN or Inf")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise InputError(f"audio_sample_rate={sample_rate!r}: expected a positive whole number of Hz")
    x = x.astype(np.float32)
    if sample_rate != SAMPLE_RATE:
        x = np.asarray(soxr.resample(x, sample_rate, SAMPLE_RATE, quality="soxr_hq"), np.float32)
    return x


def read_pose_video(video, fps: int = 16) -> np.ndarray:
    """A pose video file (sampled at `fps` from the start, as the official read_last_n_frames(reverse=True)) or
    [T, H, W, 3] uint8 frames already at `fps` -> [T, H, W, 3] uint8."""
    if isinstance(video, (str, os.PathLike)):
        existing_file(video, f"pose_video {str(video)!r}")
        try:
            reader = imageio_ffmpeg.read_frames(str(video), pix_fmt="rgb24")
            meta = next(reader)
            w, h = meta["size"]
            frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
        except (OSError, RuntimeError, StopIteration, KeyError) as e:
            raise InputFileError(f"pose_video {str(video)!r}: not a readable video ({e})") from e
        if not frames:
            raise InputFileError(f"pose_video {str(video)!r}: holds no frames")
        interval = max(1, round(float(meta.get("fps") or fps) / fps))
        return np.stack(frames[::interval])
    x = np.asarray(video)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or x.shape[0] == 0:
        raise InputError(f"pose_video has shape {x.shape} / dtype {x.dtype}; expected [T, H, W, 3] uint8 frames")
    return x


def positive_int(value, name: str, multiple: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < multiple or value % multiple:
        what = "a whole number >= 1" if multiple == 1 else f"a positive multiple of {multiple}"
        raise InputError(f"{name}={value!r}: must be {what}")
    return int(value)


def positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value) \
            or value <= 0:
        raise InputError(f"{name}={value!r}: must be a finite number > 0")
    return float(value)


def output_size(img_hw: tuple[int, int], height: int | None, width: int | None, max_area: int) -> tuple[int, int]:
    """(height, width): the explicit size (both multiples of 64) or, as officially, from the image and max_area."""
    if (height is None) != (width is None):
        raise InputError(f"height={height!r}, width={width!r}: give both or neither (then the size follows the "
                         "image and max_area)")
    if height is None:
        return size_less_than_area(*img_hw, target_area=positive_int(max_area, "max_area"))
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < SIZE_DIVISOR or v % SIZE_DIVISOR:
            raise InputError(f"{name}={v!r}: S2V sizes must be multiples of {SIZE_DIVISOR} (>= {SIZE_DIVISOR}): the "
                             "official code pads to them and the frame packer needs 8 latent rows/columns")
    return int(height), int(width)
