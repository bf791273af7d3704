"""`wan22 generate --task animate-14B`: the options read and checked (every input file decoded) before any model
loads, one clear error each; a whole run on the tiny random preset (slow)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wan22_jax.animate_cli import check_animate_arguments, wants_animate
from wan22_jax.cli import build_parser
from wan22_jax.errors import InputError, InputFileError
from wan22_jax.video import Video, read_video

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    Image.fromarray(RNG.integers(0, 255, (32, 48, 3), np.uint8)).save(d / "src_ref.png")
    for name, shape in (("src_pose", (9, 32, 48, 3)), ("src_face", (9, 16, 16, 3)), ("src_bg", (9, 32, 48, 3)),
                        ("src_mask", (9, 32, 48, 3)), ("mask8", (8, 32, 48, 3)), ("pose4", (4, 32, 48, 3)),
                        ("face8", (8, 16, 16, 3))):
        Video(RNG.integers(0, 255, shape, np.uint8)).save(d / f"{name}.mp4")
    (d / "broken.mp4").write_bytes(b"\x00" * 64)
    return d


def _args(*argv):
    return build_parser().parse_args(["generate", *map(str, argv)])


def test_src_root_gives_the_call_its_inputs(src):
    args = _args("--task", "animate-14B", "--preset", "tiny-random", "--src-root", src, "--mode", "replace",
                 "--frames", "5", "--guide-scale", "2")
    assert wants_animate(args)
    call = check_animate_arguments(args)
    assert call["mode"] == "replace" and call["clip_len"] == 5 and call["guidance_scale"] == 2.0
    assert call["pose_video"].shape == (9, 32, 48, 3) and call["mask_video"].shape == (9, 32, 48, 3)
    assert not wants_animate(_args("--preset", "tiny-random", "--prompt", "x"))


@pytest.mark.parametrize("extra,err,match", [
    (["--mode", "replace", "--mask-video", "{src}/mask8.mp4"], InputError,
     "mask video has 8 frames but the pose video has 9"),
    (["--pose-video", "{src}/pose4.mp4", "--face-video", "{src}/pose4.mp4", "--frames", "5"], InputError,
     "pose video has 4 frames, fewer than one clip of 5"),
    (["--face-video", "{src}/face8.mp4"], InputError, "face video has 8 frames but the pose video has 9"),
    (["--pose-video", "{src}/broken.mp4"], InputFileError, "pose video .*broken.mp4: not a readable video"),
    (["--image", "{src}/absent.png"], InputFileError, "reference image .*absent.png: no such file"),
    (["--size", "64x64"], InputError, "--size is not supported with --task animate-14B"),
    (["--guide-scale", "1", "2"], InputError, "give one value"),
])
def test_bad_inputs_are_one_clear_error_before_loading(src, extra, err, match):
    args = _args("--task", "animate-14B", "--preset", "tiny-random", "--src-root", src,
                 *(e.format(src=src) for e in extra))
    with pytest.raises(err, match=match):
        check_animate_arguments(args)


def test_replace_without_bg_and_mask(src, tmp_path):
    args = _args("--task", "animate-14B", "--mode", "replace", "--image", src / "src_ref.png", "--pose-video",
                 src / "src_pose.mp4", "--face-video", src / "src_face.mp4")
    with pytest.raises(InputError, match="replace mode needs background video, mask video"):
        check_animate_arguments(args)


def test_prompt_embeds_files_and_the_memory_check_flag(src, tmp_path):
    np.save(tmp_path / "p.npy", np.full((3, 24), 0.5, np.float32))
    np.save(tmp_path / "n.npy", np.zeros((1, 2, 24), np.float32))
    base = ("--task", "animate-14B", "--preset", "tiny-random", "--src-root", src)
    call = check_animate_arguments(_args(*base, "--prompt-embeds", tmp_path / "p.npy", "--negative-prompt-embeds",
                                         tmp_path / "n.npy", "--no-memory-check"))
    assert call["prompt_embeds"].shape == (3, 24) and call["negative_prompt_embeds"].shape == (1, 2, 24)
    assert call["check_memory"] is False
    assert check_animate_arguments(_args(*base))["check_memory"] is True
    with pytest.raises(InputError, match="give --prompt or --prompt-embeds, not both"):
        check_animate_arguments(_args(*base, "--prompt", "x", "--prompt-embeds", tmp_path / "p.npy"))
    with pytest.raises(InputFileError, match="--negative-prompt-embeds .*absent.npy: no such file"):
        check_animate_arguments(_args(*base, "--negative-prompt-embeds", tmp_path / "absent.npy"))


def test_animate_options_with_another_task(src):
    args = _args("--task", "ti2v-5B", "--pose-video", src / "src_pose.mp4", "--prompt", "x")
    assert wants_animate(args)
    with pytest.raises(InputError, match="--pose-video: options of --task animate-14B, not of --task ti2v-5B"):
        check_animate_arguments(args)


@pytest.mark.slow
def test_generate_animate_on_the_tiny_random_preset(src, tmp_path):
    np.save(tmp_path / "p.npy", np.full((3, 32), 0.5, np.float32))  # the preset's text_dim
    r = subprocess.run([sys.executable, "-m", "wan22_jax", "generate", "--task", "animate-14B", "--preset",
                        "tiny-random", "--src-root", str(src), "--mode", "replace", "--steps", "2", "--quiet",
                        "--prompt-embeds", str(tmp_path / "p.npy"), "--out", str(tmp_path / "a.mp4")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in r.stdout and "(replace)" in r.stdout
    assert read_video(tmp_path / "a.mp4").shape == (9, 32, 48, 3)
    r = subprocess.run([sys.executable, "-m", "wan22_jax", "generate", "--task", "animate-14B", "--preset",
                        "tiny-random", "--src-root", str(src), "--mode", "replace", "--mask-video",
                        str(src / "mask8.mp4"), "--out", str(tmp_path / "b.mp4")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 2 and "error: mask video has 8 frames but the pose video has 9" in r.stderr
    assert not (tmp_path / "b.mp4").exists()
