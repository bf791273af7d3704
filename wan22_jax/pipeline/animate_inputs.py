"""Animate-14B inputs from files: the folder the official preprocessing writes (`--src_root_path` of the
official generate.py) or explicit paths, decoded to the uint8 arrays `generate_animate` takes.

The official `wan/modules/animate/preprocess` scripts (pose, face and segmentation detectors) write:

    src_ref.png    the reference character (any size: padded and resized to the pose frames, `padding_resize`)
    src_pose.mp4   the driving pose skeletons, [T, H, W] frames
    src_face.mp4   the driving face crops, [T, 512, 512]
    src_bg.mp4     replacement only: the driving video with the person removed, [T, H, W]
    src_mask.mp4   replacement only: the person's mask (white = person), [T, H, W]

Running those detectors is out of scope here; this module only reads their output. Every file is checked (exists,
decodes, has frames) before any model runs; a problem raises InputFileError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from wan22_jax.errors import InputError, InputFileError
from wan22_jax.pipeline.media_inputs import read_image_file, read_video_file

SRC_FILES = {"ref_image": "src_ref.png", "pose_video": "src_pose.mp4", "face_video": "src_face.mp4",
             "bg_video": "src_bg.mp4", "mask_video": "src_mask.mp4"}
MODES = ("animate", "replace")


def check_mode(mode: str) -> bool:
    """True for "replace", False for "animate"; InputError otherwise."""
    if mode not in MODES:
        raise InputError(f"mode {mode!r}: expected one of {MODES} (animation or character replacement)")
    return mode == "replace"


def padding_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The official `WanAnimate.padding_resize`: scale [h, w, 3] uint8 to fit (height, width) keeping its aspect,
    centred on black. The scaling is bilinear (PIL) where the official uses cv2.INTER_LINEAR, so a reference of
    another size than the pose frames may differ by a grey level; one of the same size is passed unchanged.

    Returns:
      [height, width, 3] uint8.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return np.asarray(image, np.uint8)
    out = np.zeros((height, width, 3), np.uint8)
    if h / w > height / width:
        new_w = int(height / h * w)
        scaled = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((new_w, height), Image.BILINEAR))
        pad = int((width - new_w) / 2)
        out[:, pad:pad + new_w] = scaled
    else:
        new_h = int(width / w * h)
        scaled = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((width, new_h), Image.BILINEAR))
        pad = int((height - new_h) / 2)
        out[pad:pad + new_h] = scaled
    return out


def _as_image(value, what: str) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        return read_image_file(value, f"{what} {Path(value)}")
    if isinstance(value, Image.Image):
        return np.asarray(value.convert("RGB"))
    return np.asarray(value)


def _as_video(value, what: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return read_video_file(value, f"{what} {Path(value)}")
    return np.asarray(value)


def animate_inputs(*, src_root: str | os.PathLike | None = None, ref_image=None, pose_video=None, face_video=None,
                   bg_video=None, mask_video=None, mode: str = "animate") -> dict[str, np.ndarray | None]:
    """The decoded inputs of one Animate run: arrays, files, or the official preprocessing folder.

    Args:
      src_root: a folder in the official layout (SRC_FILES); an explicit argument overrides its file.
      ref_image: [h, w, 3] uint8, a PIL image or a path. pose_video, face_video, bg_video, mask_video:
        [T, H, W, 3] uint8 arrays or video paths (bg and mask only for mode "replace", else ignored).
      mode: "animate" or "replace".
    Returns:
      {"ref_image": [H, W, 3] uint8 (padded and resized to the pose frames), "pose_video", "face_video",
       "bg_video", "mask_video": [T, ...] uint8 or None}.
    Raises:
      InputError: a missing input; InputFileError: a file that is missing or unreadable.
    """
    replace = check_mode(mode)
    given = dict(ref_image=ref_image, pose_video=pose_video, face_video=face_video, bg_video=bg_video,
                 mask_video=mask_video)
    if not replace:
        given.update(bg_video=None, mask_video=None)
    if src_root is not None:
        root = Path(src_root)
        if not root.is_dir():
            raise InputFileError(f"source folder {root}: no such folder")
        for key, name in SRC_FILES.items():
            if given[key] is None and (replace or key not in ("bg_video", "mask_video")):
                given[key] = root / name
    names = {"ref_image": "reference image", "pose_video": "pose video", "face_video": "face video",
             "bg_video": "background video", "mask_video": "mask video"}
    needed = ["ref_image", "pose_video", "face_video"] + (["bg_video", "mask_video"] if replace else [])
    missing = [names[k] for k in needed if given[k] is None]
    if missing:
        raise InputError(f"{mode} mode needs {', '.join(missing)} (give them, or a src_root folder holding "
                         f"{', '.join(SRC_FILES[k] for k in needed)})")
    ref = _as_image(given["ref_image"], names["ref_image"])
    out = {k: _as_video(given[k], names[k]) for k in ("pose_video", "face_video", "bg_video", "mask_video")}
    pose = out["pose_video"]
    if ref.ndim != 3 or ref.shape[-1] != 3:
        raise InputError(f"reference image has shape {ref.shape}; expected [H, W, 3] RGB")
    if pose.ndim == 4:
        ref = padding_resize(ref, pose.shape[1], pose.shape[2])
    return {"ref_image": ref, **out}


__all__ = ["MODES", "SRC_FILES", "animate_inputs", "check_mode", "padding_resize"]
