"""Audio tracks in saved videos (`Video(audio=...)`, `mux_audio` in wan22_jax/video.py): muxed, trimmed to the
video's length, and written atomically (a failed mux leaves nothing behind)."""

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

from wan22_jax.errors import InputError, InputFileError
from wan22_jax.video import Video, read_video

FRAMES = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)  # 0.5 s at 16 fps


def _audio_seconds(path) -> float:
    """The decoded audio stream's length (16 kHz mono float32 via ffmpeg)."""
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-map", "0:a:0",
                          "-f", "f32le", "-ac", "1", "-ar", "16000", "-"], capture_output=True, check=True).stdout
    return len(raw) / 4 / 16000


def test_samples_muxed_and_trimmed_to_the_video(tmp_path):
    wave = (0.3 * np.sin(np.arange(48000) * 2 * np.pi * 440 / 16000)).astype(np.float32)  # 3 s of audio
    path = Video(FRAMES, fps=16, audio=wave).save(tmp_path / "v.mp4")
    assert read_video(path).shape == FRAMES.shape
    assert abs(_audio_seconds(path) - 0.5) < 0.07  # AAC frames are 64 ms at 16 kHz
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # no temporary left


def test_audio_file_muxed_and_trimmed(tmp_path):
    soundfile.write(tmp_path / "speech.wav", np.random.default_rng(1).uniform(-0.5, 0.5, 44100 * 2), 44100)
    path = Video(FRAMES, fps=16, audio=tmp_path / "speech.wav").save(tmp_path / "v.mkv")
    assert abs(_audio_seconds(path) - 0.5) < 0.07
    assert (tmp_path / "speech.wav").is_file()  # the caller's file is never removed


def test_failed_mux_leaves_no_file(tmp_path):
    (tmp_path / "fake.wav").write_text("not audio")
    with pytest.raises(InputFileError, match="muxing the audio fake.wav into v.mp4 failed"):
        Video(FRAMES, fps=16, audio=tmp_path / "fake.wav").save(tmp_path / "v.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.wav"]
    with pytest.raises(InputError, match="has an audio track, which '.gif' cannot hold"):
        Video(FRAMES, fps=16, audio=np.zeros(100, np.float32)).save(tmp_path / "v.gif")
