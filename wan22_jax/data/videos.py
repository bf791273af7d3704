"""Training samples from real files: a folder of videos and images with a caption per file, or a manifest.

Layouts (paths in a manifest are relative to the manifest's folder unless absolute):

    folder/                      manifest.jsonl                          manifest.csv
      cat.mp4   cat.txt            {"path": "cat.mp4", "caption": "...",   path,caption,image
      sub/dog.png  sub/dog.txt      "image": "cat_first.png"}              cat.mp4,"a cat",cat_first.png

A folder is searched recursively; each video or image needs a UTF-8 caption beside it with the same stem and
`.txt`. `image` (manifest only) is an optional first-frame image for image-to-video training.

Videos are decoded with the ffmpeg that imageio-ffmpeg ships; images with Pillow. Captions go through the same
cleaning as the tokenizer at inference (`models.tokenizer.clean_text`). A file that cannot be used (unreadable,
too few frames, no caption) is skipped and counted in a `SkipReport`: one bad file never stops a run.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import imageio_ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from wan22_jax.data.buckets import (Bucket, BucketConfig, cover_crop, frame_bucket, nearest_resolution,
                                    resolutions, source_indices)
from wan22_jax.errors import InputError, InputFileError
from wan22_jax.models.tokenizer import clean_text

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# skip reasons (the keys of SkipReport.counts)
MISSING_FILE = "missing file"
MISSING_CAPTION = "missing caption"
UNREADABLE = "unreadable"
TOO_FEW_FRAMES = "too few frames"
UNSUPPORTED = "unsupported file type"


@dataclasses.dataclass(frozen=True)
class Sample:
    """One training file. key: stable id (path relative to the data root); caption: cleaned text; image: an
    optional first-frame image (image-to-video)."""

    key: str
    path: Path
    caption: str
    image: Path | None = None

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_SUFFIXES


@dataclasses.dataclass(frozen=True)
class Clip:
    """A sample cut to its bucket. video: [3, T, H, W] float32 in [-1, 1] (the VAE's input); image:
    [3, 1, H, W] (the first-frame image cut the same way) or None."""

    sample: Sample
    bucket: Bucket
    video: np.ndarray
    image: np.ndarray | None = None


class SampleError(Exception):
    """Why one sample cannot be used: `reason` is one of the skip reasons above, `detail` says more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class SkipReport:
    """The samples left out and why: counts per reason and (key, reason, detail) of each."""

    def __init__(self):
        self.items: list[tuple[str, str, str]] = []

    def add(self, key: str, reason: str, detail: str = "") -> None:
        self.items.append((key, reason, detail))

    @property
    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(r for _, r, _ in self.items))

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        if not self.items:
            return "no file skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"{len(self.items)} file(s) skipped ({parts})"

    def to_dict(self) -> dict:
        return {"counts": self.counts, "files": [{"key": k, "reason": r, "detail": d} for k, r, d in self.items]}


# ----------------------------------------------------------------------------------------------- listing
def read_caption(path: Path) -> str:
    """The cleaned caption in a UTF-8 text file (a byte-order mark is allowed); SampleError if missing/empty."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SampleError(MISSING_CAPTION, f"no caption file {path.name}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SampleError(MISSING_CAPTION, f"cannot read {path.name} as UTF-8 ({e})") from None
    return _clean(text, path.name)


def _clean(text, where: str) -> str:
    if not isinstance(text, str) or not clean_text(text):
        raise SampleError(MISSING_CAPTION, f"empty caption in {where}")
    return clean_text(text)


def _media(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES


def scan_folder(root: str | os.PathLike, report: SkipReport) -> list[Sample]:
    """Every video and image under `root` (recursively, sorted) with its sidecar caption."""
    root = Path(root)
    samples = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _media(p)):
        key = path.relative_to(root).as_posix()
        try:
            samples.append(Sample(key, path, read_caption(path.with_suffix(".txt"))))
        except SampleError as e:
            report.add(key, e.reason, e.detail)
    return samples


def _manifest_rows(path: Path) -> list[dict]:
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
            if rows and "path" not in rows[0]:
                raise InputError(f"{path}: a CSV manifest needs a header row with a 'path' column (and 'caption', "
                                 f"optionally 'image'); found {list(rows[0])}")
            return rows
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise InputError(f"{path}:{n}: each line must be a JSON object with 'path' and 'caption'")
                    rows.append(row)
        return rows
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"{path}: cannot read the manifest ({e})") from e


def read_manifest(path: str | os.PathLike, report: SkipReport) -> list[Sample]:
    """The samples of a JSONL or CSV manifest: fields path, caption, optional image."""
    path = Path(path)
    base = path.parent
    samples, seen = [], collections.Counter()
    for n, row in enumerate(_manifest_rows(path), 1):
        raw = row.get("path")
        if not isinstance(raw, str) or not raw:
            report.add(f"{path.name}:{n}", MISSING_FILE, "no 'path' field")
            continue
        file = base / raw
        key = Path(raw).as_posix()
        seen[key] += 1
        if seen[key] > 1:  # the same file twice (two captions): two samples
            key = f"{key}#{seen[key]}"
        image = row.get("image") or None
        try:
            if not file.is_file():
                raise SampleError(MISSING_FILE, f"{file} does not exist")
            if not _media(file):
                raise SampleError(UNSUPPORTED, f"{file.suffix!r} is not one of {VIDEO_SUFFIXES + IMAGE_SUFFIXES}")
            if image is not None and not (base / image).is_file():
                raise SampleError(MISSING_FILE, f"first-frame image {base / image} does not exist")
            samples.append(Sample(key, file, _clean(row.get("caption"), f"{path.name} line {n}"),
                                  None if image is None else base / image))
        except SampleError as e:
            report.add(key, e.reason, e.detail)
    return samples


# ----------------------------------------------------------------------------------------------- decoding
def _cut(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [height, width, 3] uint8: resized to cover (aspect ratio kept), then centre-cropped."""
    (rh, rw), (top, left, bottom, right) = cover_crop(frame.shape[0], frame.shape[1], height, width)
    img = Image.fromarray(frame)
    if (rh, rw) != (frame.shape[0], frame.shape[1]):
        img = img.resize((rw, rh), Image.Resampling.BICUBIC)  # antialiased when shrinking
    return np.asarray(img)[top:bottom, left:right]


def _to_video(frames: list[np.ndarray]) -> np.ndarray:
    """T frames [H, W, 3] uint8 -> [3, T, H, W] float32 in [-1, 1] (the VAE's input)."""
    return np.moveaxis(np.stack(frames).astype(np.float32) / 127.5 - 1.0, -1, 0)


def read_image(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 of an image file; SampleError if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(UNREADABLE, f"{path.name}: {e}") from None


def read_clip(path: Path, cfg: BucketConfig, size: Callable[[int, int], tuple[int, int]]
              ) -> tuple[list[np.ndarray], int, float | None]:
    """The clip of a video at cfg.fps from its first frame, as long as the largest frame bucket or the video.

    Frames are cut to `size(source height, source width)` as they are decoded and only the ones the clip uses
    are kept, so memory holds the clip at its bucket's size, never the source's (a 4K video is fine); decoding
    stops after the last frame needed.

    Returns:
      (cut frames [h, w, 3] uint8 of the clip (a source frame repeats when cfg.fps is above the source's),
       source frames decoded, source fps or None). SampleError if ffmpeg cannot read the file.
    """
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration, ValueError) as e:
        raise SampleError(UNREADABLE, str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)) from None
    clip, decoded = [], 0
    try:
        w, h = meta["size"]
        fps = meta.get("fps") or None
        out_h, out_w = size(h, w)
        wanted = source_indices(cfg.frames[-1], fps, cfg.fps)  # non-decreasing source index per clip frame
        for buf in reader:
            while len(clip) < len(wanted) and wanted[len(clip)] == decoded:
                clip.append(_cut(np.frombuffer(buf, np.uint8).reshape(h, w, 3), out_h, out_w))
            decoded += 1
            if len(clip) == len(wanted):
                break
    except (OSError, RuntimeError, ValueError) as e:
        raise SampleError(UNREADABLE, str(e)) from None
    finally:
        reader.close()  # stops ffmpeg
    if decoded == 0:
        raise SampleError(UNREADABLE, "no frame could be decoded")
    return clip, decoded, fps


class VideoDataset:
    """The usable samples of a folder or manifest, cut to buckets on demand.

    Args:
      source: a folder (sidecar captions) or a .jsonl / .csv manifest.
      buckets: how samples are cut (BucketConfig).
    Attributes:
      samples: the listed samples; report: SkipReport of files left out (while listing, then while loading).
    """

    def __init__(self, source: str | os.PathLike, buckets: BucketConfig):
        source = Path(source)
        self.source, self.buckets = source, buckets
        self.report = SkipReport()
        self._resolutions = resolutions(buckets)
        if source.is_dir():
            self.samples = scan_folder(source, self.report)
        elif source.is_file() and source.suffix.lower() in (".jsonl", ".json", ".csv"):
            self.samples = read_manifest(source, self.report)
        else:
            raise InputFileError(f"{source}: not a folder of videos or a .jsonl / .csv manifest")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, sample: Sample) -> Clip:
        """The sample cut to its bucket; SampleError says why it cannot be."""
        cfg = self.buckets

        def size(h: int, w: int) -> tuple[int, int]:
            return nearest_resolution(h, w, self._resolutions)

        if sample.is_image:
            if not cfg.images:
                raise SampleError(UNSUPPORTED, "images are off (buckets.images=false)")
            image = read_image(sample.path)
            frames = [_cut(image, *size(*image.shape[:2]))]
        else:
            frames, decoded, fps = read_clip(sample.path, cfg, size)
            count = frame_bucket(len(frames), cfg)
            if count is None:
                raise SampleError(TOO_FEW_FRAMES, f"{decoded} frame(s) at {fps} fps give {len(frames)} at "
                                  f"{cfg.fps or fps} fps; the smallest frame bucket is {cfg.frames[0]}")
            frames = frames[:count]
        bucket = Bucket(len(frames), *frames[0].shape[:2])
        first = None
        if sample.image is not None:  # cut to the sample's bucket, whatever its own shape
            first = _to_video([_cut(read_image(sample.image), bucket.height, bucket.width)])
        return Clip(sample, bucket, _to_video(frames), first)

    def clips(self) -> Iterator[Clip]:
        """Every usable sample, cut; the others are added to `report` and skipped."""
        for sample in self.samples:
            try:
                yield self.load(sample)
            except SampleError as e:
                self.report.add(sample.key, e.reason, e.detail)
