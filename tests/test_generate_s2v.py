"""`wan22 generate --task s2v-14B` (wan22_jax/generate_s2v.py): each bad input is one `error:` line and exit code 2
before any model is built; (slow) the tiny random preset writes an mp4 with the audio track."""

import re
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
from PIL import Image

from wan22_jax.cli import build_parser, main
from wan22_jax.errors import InputError
from wan22_jax.generate_s2v import check_arguments
from wan22_jax.video import read_video


@pytest.fixture()
def files(tmp_path):
    Image.fromarray(np.zeros((70, 90, 3), np.uint8)).save(tmp_path / "ref.png")
    soundfile.write(tmp_path / "a.wav", np.zeros(22050, np.float32), 22050)  # 1 s
    return tmp_path


def _run(capsys, *args):
    rc = main(["generate", "--task", "s2v-14B", "--preset", "tiny-random", "--prompt", "a singer", *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (lambda d: ["--audio", d / "a.wav"], "needs --image"),
    (lambda d: ["--image", d / "missing.png", "--audio", d / "a.wav"], "--image .*missing.png': no such file"),
    (lambda d: ["--image", d / "ref.png"], "needs --audio"),
    (lambda d: ["--image", d / "ref.png", "--audio", d / "ref.png"], "ref.png' cannot be read"),
    (lambda d: ["--image", d / "ref.png", "--audio", d / "a.wav", "--out", d / "v.gif"], "carry the audio track"),
    (lambda d: ["--image", d / "ref.png", "--audio", d / "a.wav", "--frames", "9"], "--frames: not available"),
    (lambda d: ["--image", d / "ref.png", "--audio", d / "a.wav", "--solver", "euler"], "S2V runs unipc or dpm"),
    (lambda d: ["--image", d / "ref.png", "--audio", d / "a.wav", "--face-video", d / "f.mp4"],
     "--face-video: not available for --task s2v-14B"),
    (lambda d: ["--image", d / "ref.png", "--audio", d / "a.wav", "--pose-video", d / "none.mp4"],
     "pose_video .*none.mp4': no such file"),
])
def test_bad_inputs_are_one_error(files, capsys, args, message):
    rc, err = _run(capsys, *args(files))
    assert rc == 2 and err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_s2v_options_with_another_task(files, capsys):
    rc = main(["generate", "--task", "ti2v-5B", "--preset", "tiny-random", "--prompt", "x", "--audio",
               str(files / "a.wav")])
    assert rc == 2 and "--audio: only for --task s2v-14B" in capsys.readouterr().err


def test_mesh_embeddings_and_memory_check_options(files):
    np.save(files / "p.npy", np.full((3, 16), 0.5, np.float32))
    base = ["generate", "--task", "s2v-14B", "--preset", "tiny-random", "--image", str(files / "ref.png"), "--audio",
            str(files / "a.wav"), "--mesh", "fsdp=1", "--no-memory-check"]
    call = check_arguments(build_parser().parse_args([*base, "--prompt-embeds", str(files / "p.npy")]))
    assert call["prompt"] is None and call["prompt_embeds"].shape == (3, 16) and call["check_memory"] is False
    with pytest.raises(InputError, match="give --prompt or --prompt-embeds, not both"):
        check_arguments(build_parser().parse_args([*base, "--prompt", "x", "--prompt-embeds", str(files / "p.npy")]))
    with pytest.raises(InputError, match="needs --prompt TEXT or --prompt-embeds FILE"):
        check_arguments(build_parser().parse_args(base))


@pytest.mark.slow
def test_tiny_random_writes_mp4_with_audio(files):
    out = files / "talk.mp4"
    r = subprocess.run([sys.executable, "-m", "wan22_jax", "generate", "--task", "s2v-14B", "--preset", "tiny-random",
                        "--prompt", "a singer", "--image", files / "ref.png", "--audio", files / "a.wav",
                        "--num-clips", "2", "--out", out, "--quiet"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "with audio, 2 clip(s)" in r.stdout
    assert read_video(out).shape == (13, 64, 64, 3)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(out)], capture_output=True,
                           text=True).stderr
    assert "Audio: aac" in probe
