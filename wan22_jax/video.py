"""Generated videos: uint8 frames, mp4 writing (ffmpeg shipped by imageio-ffmpeg), reading back, notebook display."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import mediapy
import numpy as np
import soundfile
from PIL import Image

from wan22_jax.errors import InputError, InputFileError
from wan22_jax.io.atomic import atomic_path

# mediapy calls `ffmpeg` from PATH unless told otherwise; the binary inside imageio-ffmpeg needs no system install.
mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())


def to_uint8(video: np.ndarray) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, truncating like the official save_video (x+1)/2*255."""
    video = np.clip(np.asarray(video, np.float32), -1.0, 1.0)
    frames = ((video + 1.0) / 2.0 * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(frames, 0, -1))


def check_fps(fps, what: str = "fps") -> int:
    """The frame rate as an int; InputError unless it is a whole number in [1, 240]."""
    if isinstance(fps, (float, np.floating)) and float(fps).is_integer():
        fps = int(fps)
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 1 <= fps <= 240:
        raise InputError(f"{what}={fps!r}: must be a whole number of frames per second in [1, 240] (the tasks "
                         "use 16 or 24)")
    return int(fps)


def as_output(frames: np.ndarray, output_type: str):
    """Decoded uint8 frames [B, F, H, W, 3] in the call's output_type: "video" and "np" give an array ("np":
    float32 in [0, 1], as diffusers), "pil" a list (per video) of lists of PIL images."""
    if output_type == "np":
        return frames.astype(np.float32) / 255.0
    if output_type == "pil":
        return [[Image.fromarray(f) for f in video] for video in frames]
    return frames


# audio codec per container: the official merge_video_audio writes AAC at 192 kb/s into the mp4
AUDIO_CODECS = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus"}


def mux_audio(video_path: str | os.PathLike, audio, out_path: str | os.PathLike, *, duration: float,
              audio_rate: int = 16000) -> Path:
    """Writes `out_path`: the video stream of `video_path` copied, plus the audio trimmed to `duration` seconds
    (the video's length; a shorter audio track just ends early), encoded as AAC (Opus for .webm).

    Not atomic by itself: `Video.save` calls it on a temporary path and renames the result into place.

    Args:
      video_path: a silent video file. audio: an audio file path (any format ffmpeg reads) or mono float
        samples [N] at audio_rate Hz. out_path: the muxed file (its extension picks the audio codec).
      duration: seconds of audio to keep.
    Returns:
      out_path.
    """
    out_path = Path(out_path)
    codec = AUDIO_CODECS.get(out_path.suffix.lower())
    if codec is None:
        raise InputError(f"{out_path}: {out_path.suffix!r} holds no audio track; use one of {sorted(AUDIO_CODECS)}")
    if isinstance(audio, (str, os.PathLike)):
        if not Path(audio).is_file():
            raise InputFileError(f"audio file {str(audio)!r} does not exist")
        audio_file, written = Path(audio), False
    else:
        samples = np.asarray(audio, np.float32)
        if samples.ndim != 1:
            raise InputError(f"audio has shape {samples.shape}; expected mono samples [N]")
        audio_file, written = out_path.with_name(out_path.stem + ".audio.wav"), True
        keep = int(np.ceil(duration * audio_rate))
        soundfile.write(audio_file, samples[:keep], int(audio_rate), subtype="FLOAT")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video_path),
           "-t", f"{duration:.6f}", "-i", str(audio_file), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
           "-c:a", codec, "-b:a", "192k", str(out_path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        if written:  # only our own temporary WAV, never the caller's file
            audio_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise InputFileError(f"muxing the audio {audio_file.name} into {out_path.name} failed: "
                             f"{done.stderr.strip()[-500:]}")
    return out_path


@dataclasses.dataclass(frozen=True)
class Video:
    """frames: [F, H, W, 3] uint8; fps: the task's default frame rate.

    audio: an audio track saved with the video (S2V: the driving speech): a file path or mono float samples at
      audio_rate Hz; None for a silent video.
    """

    frames: np.ndarray
    fps: int = 16
    audio: object = None
    audio_rate: int = 16000

    def save(self, path: str | os.PathLike, fps: int | None = None, *, quality: int = 8) -> Path:
        """Writes an H.264 mp4 (libx264, imageio quality 8 like the official writer).

        Atomic: the file appears under its name only once complete, so an interrupted write (Ctrl-C, a full
        disk) leaves no partial file. With an `audio` track, it is muxed in (`mux_audio`), trimmed to the video's
        length, before the file appears.

        Args:
          path: .mp4 (also .mov, .mkv, .webm, .gif; .gif only without audio). fps: frames per second (default:
            the task's). quality: 0 (worst) to 10 (best).
        Returns:
          The path written.
        """
        path = Path(path)
        fps = self.fps if fps is None else check_fps(fps)
        if path.suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm", ".gif"):
            raise InputError(f"{path}: unsupported video extension {path.suffix!r} (use .mp4)")
        if self.audio is not None and path.suffix.lower() not in AUDIO_CODECS:
            raise InputError(f"{path}: this video has an audio track, which {path.suffix!r} cannot hold; use .mp4")
        with atomic_path(path) as tmp:
            silent = tmp if self.audio is None else tmp.with_name("silent" + path.suffix.lower())
            if path.suffix.lower() == ".gif":
                mediapy.write_video(silent, self.frames, fps=fps, codec="gif")
            else:
                # crf ~ imageio's quality 8 of 10; yuv420p keeps the file playable everywhere
                crf = int(round(51 - quality * 51 / 10))
                mediapy.write_video(silent, self.frames, fps=fps, crf=crf)
            if self.audio is not None:
                mux_audio(silent, self.audio, tmp, duration=len(self.frames) / fps, audio_rate=self.audio_rate)
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

    videos: one `Video` (uint8 frames) per generated video. frames: the same frames in the call's output_type
      ("video": uint8 [B, F, H, W, 3]; "np": float32 in [0, 1]; "pil": lists of PIL images; "latent": None).
    video: [B, 3, F, H, W] float in [-1, 1] before quantisation.
    latents: [B, z, F', h, w] final latents. timesteps: [N] model timesteps of the schedule.
    trajectory: with return_trajectory, {"samples": [N + 1, B, ...], "velocities": [N, B, ...]} (guided).
    cond_latent: the VAE latent of the conditioning image, if any.
    skipped_steps: with a step cache, how many model evaluations skipped the blocks.
    denoise_s: wall time of the denoising loop in seconds (compilation is part of the memory check before it;
      with check_memory=False a first call includes it).
    """

    videos: list[Video]
    frames: object = None
    video: np.ndarray | None = None
    latents: np.ndarray | None = None
    timesteps: np.ndarray | None = None
    trajectory: dict | None = None
    cond_latent: np.ndarray | None = None
    skipped_steps: int | None = None  # model evaluations the step cache skipped (all experts), if one was used
    denoise_s: float | None = None
