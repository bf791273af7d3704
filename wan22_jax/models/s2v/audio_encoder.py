"""The S2V audio feature path (official `audio_encoder.py` `AudioEncoder` + `WanS2V.encode_audio`).

audio file --load_audio (16 kHz mono, librosa.load's semantics)--> waveform
  --normalize (Wav2Vec2Processor: zero mean, unit variance)--> input_values [1, N]
  --wav2vec2 (all hidden states)--> [25, T50, hidden] at 50 frames/s
  --linear_interpolation (align_corners)--> [25, T30, hidden] at 30 frames/s
  --bucket (16 fps video frames; frames past the audio are zeros)--> audio_emb [1, 25, hidden, bucket]
and num_repeat, the number of clips of `infer_frames` video frames the audio covers.

Index arithmetic runs on the host in numpy with the official expressions (np.linspace / np.round / int()), so
which audio frame feeds which video frame is exactly the official choice; the gathers and the interpolation run
in JAX.
"""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
import soundfile
import soxr

from wan22_jax.errors import InputError, InputFileError
from wan22_jax.models.s2v.wav2vec2 import Wav2Vec2Model

SAMPLE_RATE = 16000  # what wav2vec2 was trained at (the processor refuses others)
WAV2VEC_FPS = 50  # feature frames per second (320 samples each): hard-coded officially
VIDEO_RATE = 30  # the frame rate audio features are resampled to before bucketing
FPS = 16  # S2V's video frame rate


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """An audio file -> float32 mono samples at `sr`, as `librosa.load(path, sr=sr)` returns them: libsndfile
    decoding, channels averaged, then soxr's high-quality resampler with the length fixed to
    ceil(n * sr / native_sr).

    Args:
      path: any format libsndfile reads (wav, flac, ogg, mp3 with libsndfile >= 1.1).
    Returns:
      [N] float32.
    """
    if not os.path.isfile(path):
        raise InputFileError(f"audio file {str(path)!r} does not exist")
    try:
        with soundfile.SoundFile(path) as f:
            native = f.samplerate
            y = f.read(frames=-1, dtype="float32", always_2d=False).T
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise InputFileError(f"audio file {str(path)!r} cannot be read: {e}") from e
    if y.ndim > 1:
        y = np.mean(y, axis=tuple(range(y.ndim - 1)))
    if y.size == 0:
        raise InputFileError(f"audio file {str(path)!r} holds no samples")
    if native != sr:
        n = int(np.ceil(y.shape[-1] * (float(sr) / native)))
        z = soxr.resample(y, native, sr, quality="soxr_hq")
        y = np.asarray(z[:n] if len(z) >= n else np.pad(z, (0, n - len(z))), dtype=np.float32)
    return y


def normalize(waveform: np.ndarray) -> np.ndarray:
    """The Wav2Vec2Processor's input: (x - mean) / sqrt(var + 1e-7), in float32 numpy. [N] -> [1, N]."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise InputError(f"waveform has shape {x.shape}; expected mono samples [N]")
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7))[None]


def interpolation_frames(t_in: int, in_fps: int = WAV2VEC_FPS, out_fps: int = VIDEO_RATE) -> int:
    """The official output length int(t_in / in_fps * out_fps)."""
    return int(t_in / float(in_fps) * out_fps)


def linear_interpolation(features, in_fps: int = WAV2VEC_FPS, out_fps: int = VIDEO_RATE):
    """torch's F.interpolate(mode='linear', align_corners=True) along frames: [L, T, C] -> [L, T', C] with
    T' = int(T / in_fps * out_fps). Source positions and weights are formed in fp32 as torch does."""
    t_in = features.shape[1]
    t_out = interpolation_frames(t_in, in_fps, out_fps)
    if t_out < 1:
        raise InputError(f"the audio gives {t_in} wav2vec2 frames, fewer than one {out_fps} fps frame")
    scale = np.float32((t_in - 1) / (t_out - 1)) if t_out > 1 else np.float32(0)
    src = scale * np.arange(t_out, dtype=np.float32)
    i0 = np.minimum(src.astype(np.int64), t_in - 1)
    i1 = np.minimum(i0 + 1, t_in - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    x0, x1 = features[:, i0], features[:, i1]
    w1 = jnp.asarray(lam)[None, :, None]
    return x0 * (1 - w1) + x1 * w1


def bucket_indices(t30: int, infer_frames: int, fps: int = FPS, video_rate: int = VIDEO_RATE,
                   m: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Which 30 fps audio frames feed each video frame (official `get_audio_embed_bucket_fps`).

    Returns:
      (indices [bucket, 2m + 1] into the 30 fps frames, valid [bucket] bool (False: the frame is past the audio
      and gets zeros), num_repeat), bucket = num_repeat * infer_frames.
    """
    if infer_frames < 1:
        raise InputError(f"infer_frames must be positive, got {infer_frames}")
    scale = video_rate / fps
    num_repeat = int(t30 / (infer_frames * scale)) + 1
    bucket = num_repeat * infer_frames
    total = t30 + (math.ceil(num_repeat * infer_frames / fps * video_rate) - t30)
    times = np.linspace(0.0, bucket / fps, bucket, endpoint=False)
    centre = np.clip(np.round(times * video_rate).astype(int), 0, total - 1)
    stride = int(video_rate / fps)
    offsets = np.arange(-m * stride, (m + 1) * stride, stride)
    idx = np.clip(centre[:, None] + offsets[None], 0, t30 - 1)
    return idx, centre < t30, num_repeat


def audio_embedding(feat30, idx: np.ndarray, valid: np.ndarray):
    """[L, T30, C] -> audio_emb [1, L, (2m + 1) C, bucket]: the bucketed frames, zeros past the audio."""
    layers, _, c = feat30.shape
    rows = feat30[:, idx.reshape(-1)].reshape(layers, idx.shape[0], -1)  # [L, bucket, (2m+1) C]
    rows = rows * jnp.asarray(valid, rows.dtype)[None, :, None]
    return jnp.transpose(rows, (0, 2, 1))[None]


def encode_audio(model: Wav2Vec2Model, waveform: np.ndarray, infer_frames: int, *, fps: int = FPS, m: int = 0,
                 last_normed: bool = True) -> dict:
    """`WanS2V.encode_audio` on a 16 kHz waveform.

    Args:
      model: the wav2vec2 encoder; waveform: [N] float32 mono samples at 16 kHz; infer_frames: video frames per
      clip; last_normed: see models/s2v/wav2vec2.py.
    Returns:
      {"input_values": [1, N], "hidden_states": [25, T50, hidden], "audio_feat": [25, T30, hidden],
       "audio_emb": [1, 25, hidden, bucket], "num_repeat": int}.
    """
    input_values = normalize(waveform)
    hidden = model(jnp.asarray(input_values), last_normed=last_normed)[:, 0]
    feat = linear_interpolation(hidden)
    idx, valid, num_repeat = bucket_indices(feat.shape[1], infer_frames, fps=fps, m=m)
    return {"input_values": input_values, "hidden_states": hidden, "audio_feat": feat,
            "audio_emb": audio_embedding(feat, idx, valid), "num_repeat": num_repeat}


def encode_audio_file(model: Wav2Vec2Model, path: str | os.PathLike, infer_frames: int, *, fps: int = FPS,
                      m: int = 0, last_normed: bool = True) -> dict:
    """`encode_audio` on an audio file (read and resampled to 16 kHz by `load_audio`); same returns."""
    return encode_audio(model, load_audio(path), infer_frames, fps=fps, m=m, last_normed=last_normed)
