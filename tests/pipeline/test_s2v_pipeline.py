"""The S2V pipeline (wan22_jax/pipeline/s2v.py, its inputs in s2v_inputs.py): sizes as the official code picks them, every bad input refused
before any model runs, the folder dispatch of `Wan22Pipeline.from_pretrained`, and (slow) whole runs: the tiny
random preset clip after clip, and the reference case pipe_s2v through the user-facing call."""

import dataclasses

import numpy as np
import pytest
import soundfile
from flax import nnx
from refcases import REFERENCE_DIR

from wan22_jax.errors import ConfigError, InputError, InputFileError, InsufficientMemoryError
from wan22_jax.models.s2v.model_s2v import S2V_PRESETS, abstract_s2v
from wan22_jax.models.s2v.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from wan22_jax.pipeline import Wan22Pipeline, memory
from wan22_jax.pipeline.s2v import S2VDefaults, S2VPipeline
from wan22_jax.pipeline.s2v_inputs import is_s2v_folder, read_pose_video, resize_crop, size_less_than_area
from wan22_jax.presets_s2v import random_s2v_pipeline
from wan22_jax.sharding.rules import param_leaves, param_specs
from wan22_jax.verify import load_case
from wan22_jax.video import read_video

CFG = S2V_PRESETS["tiny-s2v"]


@pytest.mark.parametrize("hw_area, expected", [
    ((64, 64, 4096), (64, 64)), ((720, 1280, 1280 * 720), (704, 1280)), ((1280, 720, 1280 * 720), (1280, 704)),
    ((1024, 1024, 1024 * 704), (832, 832)), ((70, 90, 4096), (64, 64)), ((300, 200, 8192), (128, 64))])
def test_size_follows_the_image_as_officially(hw_area, expected):
    # expected values computed with the official WanS2V.get_size_less_than_area
    assert size_less_than_area(*hw_area[:2], target_area=hw_area[2]) == expected


def test_resize_crop_shorter_side_then_centre_crop():
    img = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    np.testing.assert_array_equal(resize_crop(img, 40, 60), img)  # already the size: untouched
    out = resize_crop(img, 64, 64)  # shorter side 40 -> 64, width 96, centre crop
    assert out.shape == (64, 64, 3)
    wide = resize_crop(np.full((64, 64, 3), 200, np.uint8), 64, 128)  # smaller than the crop: zero padding
    assert wide.shape == (64, 128, 3) and wide[:, :32].max() == 0 and wide[:, 32:96].min() == 200


@pytest.fixture(scope="module")
def shapes_only():
    """An S2V pipeline whose DiT, VAE and text encoder are absent: any call that got past the checks would fail
    with an AttributeError/TypeError, so these tests show the checks come first."""
    audio_cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                               conv_dim=(8,) * 7, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    audio = nnx.eval_shape(lambda: Wav2Vec2Model(audio_cfg))
    return S2VPipeline(None, CFG, None, None, audio, None, defaults=S2VDefaults(infer_frames=8, max_area=4096))


EMBEDS = np.zeros((3, CFG.text_dim), np.float32)


def _call(pipe, **kw):
    args = dict(prompt_embeds=EMBEDS, negative_prompt_embeds=EMBEDS, image=np.zeros((64, 64, 3), np.uint8),
                audio=np.zeros(16000, np.float32))
    return pipe(**{**args, **kw})


def test_bad_audio_files_are_named(shapes_only, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    with pytest.raises(InputFileError, match="broken.wav' cannot be read"):
        _call(shapes_only, audio=bad)
    with pytest.raises(InputFileError, match="missing.wav' does not exist"):
        _call(shapes_only, audio=tmp_path / "missing.wav")
    with pytest.raises(InputError, match=r"audio array has shape \(2, 100\)"):
        _call(shapes_only, audio=np.zeros((2, 100), np.float32))


def test_audio_shorter_than_one_clip(shapes_only, tmp_path):
    soundfile.write(tmp_path / "short.wav", np.zeros(4000, np.float32), 16000)  # 0.25 s; a clip is 8/16 = 0.5 s
    with pytest.raises(InputError, match=r"audio is 0.25 s long, shorter than one clip \(8 frames at 16 fps"):
        _call(shapes_only, audio=tmp_path / "short.wav")


def test_size_must_be_a_multiple_of_64(shapes_only):
    with pytest.raises(InputError, match="height=96: S2V sizes must be multiples of 64"):
        _call(shapes_only, height=96, width=64)
    with pytest.raises(InputError, match="give both or neither"):
        _call(shapes_only, height=128)


def test_missing_image(shapes_only, tmp_path):
    with pytest.raises(InputFileError, match="nope.png': no such file"):
        _call(shapes_only, image=tmp_path / "nope.png")
    with pytest.raises(InputError, match="image is required"):
        _call(shapes_only, image=None)


@pytest.mark.parametrize("kw, message", [
    (dict(infer_frames=10), "infer_frames=10: must be a positive multiple of 4"),
    (dict(num_clips=0), "num_clips=0: must be a whole number >= 1"),
    (dict(solver="euler"), "solver='euler': S2V runs"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan"),
    (dict(output_type="latent"), "no latent-only output"),
    (dict(prompt="hello", prompt_embeds=None), "there is no text encoder"),
    (dict(latents=np.zeros((1, 16, 2, 8, 8), np.float32)), r"latents has shape \(1, 16, 2, 8, 8\); expected \(2,"),
    (dict(pose_video=np.zeros((4, 64, 64), np.uint8)), r"pose_video has shape \(4, 64, 64\)"),
])
def test_bad_arguments(shapes_only, kw, message):
    with pytest.raises(InputError, match=message):
        _call(shapes_only, **kw)


def test_unreadable_pose_video(tmp_path):
    (tmp_path / "pose.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(InputFileError, match="pose.mp4': not a readable video"):
        read_pose_video(tmp_path / "pose.mp4")


def test_folder_dispatch():
    ckpt = REFERENCE_DIR / "pipe_s2v" / "checkpoint"
    assert is_s2v_folder(ckpt)
    assert not is_s2v_folder(REFERENCE_DIR / "pipe_ti2v" / "checkpoint") and not is_s2v_folder(None)
    with pytest.raises(InputError, match="S2V checkpoint; task='ti2v-5B' does not match"):
        Wan22Pipeline.from_pretrained(ckpt, task="ti2v-5B")
    with pytest.raises(ConfigError, match="'fsdp=2': 1 x 2 x 1 x 1 = 2 devices, but 1 are available"):
        Wan22Pipeline.from_pretrained(ckpt, mesh="fsdp=2", progress=False)  # a mesh is taken, and checked
    with pytest.raises(InputError, match="'s2v-14B' has no embedded model"):
        Wan22Pipeline.from_pretrained(task="s2v-14B")


def test_every_s2v_parameter_has_a_dit_rule_or_is_replicated():
    """The audio, pose, motion and cond modules are split by the DiT rules (an unknown logical axis would raise
    ConfigError here); the only parameters without logical axes, replicated on a mesh, are these small ones."""
    _, abstract = abstract_s2v(CFG)
    specs, notes = param_specs(abstract, "dit", {"data": 2, "fsdp": 2, "seq": 2, "tensor": 2})
    assert not notes
    split = {p for p, s in specs.items() if any(a is not None for a in s)}
    assert {p.split(".")[0] for p in split} >= {"casual_audio_encoder", "cond_encoder", "frame_packer",
                                               "audio_injector", "blocks"}
    unsplit = sorted(p for p, _, axes in param_leaves(abstract) if all(a is None for a in axes))
    assert unsplit == ["casual_audio_encoder.weights", "head.head.bias"]


def test_a_request_that_cannot_fit_is_refused_before_compute(shapes_only, monkeypatch):
    """shapes_only has no DiT or VAE: the refusal comes before either is needed."""
    # one clip: 6 float32 latents [16, 2, 8, 8], the decode of 19 motion + 2 latent frames (81 frames), the video
    need = 6 * 4 * 16 * 2 * 8 * 8 + 4 * 3 * 81 * 64 * 64 + 4 * 3 * 8 * 64 * 64
    assert shapes_only.check_memory(1, 8, 64, 64) == need
    monkeypatch.setattr(memory, "available_bytes", lambda devices: (need - 1, "RAM"))
    with pytest.raises(InsufficientMemoryError, match=r"1 clip\(s\) of 8 frames at 64x64 needs 0.0 GiB, 0.0 GiB RAM "
                       r"available; try fewer clips \(num_clips, --num-clips\), fewer infer_frames, a smaller size, "
                       r"a mesh over more devices"):
        _call(shapes_only, num_clips=1)
    with pytest.raises(InsufficientMemoryError, match="2 clip"):  # the clips the audio covers
        _call(shapes_only)


# ------------------------------------------------------------------------------------------------ whole runs
@pytest.mark.slow
def test_reference_case_through_the_pipeline_call():
    """pipe_s2v from the user-facing call (image, waveform, pose frames, embeddings, explicit noise) matches the
    official video at the case's tolerance."""
    case = load_case(REFERENCE_DIR / "pipe_s2v")
    inp, call = case.inputs, case.call
    pipe = Wan22Pipeline.from_pretrained(case.checkpoint, dtype="fp32", progress=False)
    assert isinstance(pipe, S2VPipeline)
    pipe = dataclasses.replace(pipe, audio_last_normed=False)  # the case was made with transformers 5.x
    out = pipe(prompt_embeds=case.outputs["context"], negative_prompt_embeds=case.outputs["context_null"],
               image=inp["ref_image_uint8"], audio=inp["waveform"], pose_video=inp["pose_video_uint8"],
               num_clips=call["num_repeat"], infer_frames=call["infer_frames"], max_area=call["max_area"],
               num_inference_steps=call["sampling_steps"], guidance_scale=call["guide_scale"], shift=call["shift"],
               latents=inp["noise"], progress=False)
    ref = case.outputs["video"]
    err = np.abs(out.video[0] - ref).max() / np.abs(ref).max()
    assert err < case.tolerance, err
    np.testing.assert_allclose(out.latents, case.outputs["latents"], atol=case.tolerance * np.abs(
        case.outputs["latents"]).max())


@pytest.mark.slow
def test_tiny_random_clips_and_saved_audio(tmp_path):
    pipe = random_s2v_pipeline()
    wave = (0.2 * np.sin(np.arange(24000) * 2 * np.pi * 300 / 16000)).astype(np.float32)  # 1.5 s: 3 clips of 0.5
    img = np.random.default_rng(0).integers(0, 256, (72, 100, 3), dtype=np.uint8)
    pose = np.random.default_rng(1).integers(0, 256, (10, 80, 80, 3), dtype=np.uint8)
    out = pipe(prompt="a woman singing", image=img, audio=wave, pose_video=pose, num_clips=2, seed=3,
               progress=False)
    assert out.frames.shape == (1, 2 * 8 - 3, 64, 64, 3) and out.latents.shape == (2, 16, 2, 8, 8)
    assert np.isfinite(out.video).all() and out.frames.std() > 0
    path = out.videos[0].save(tmp_path / "talk.mp4")
    assert read_video(path).shape == (13, 64, 64, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]
