"""`AnimatePipeline`: loading an Animate release folder (also through `Wan22Pipeline.from_pretrained`), the call's
input errors before any compute, and the call running `generate_animate` with the noise drawn from its seed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from refcases import REFERENCE_DIR
from wan22_jax.animate_presets import random_animate_pipeline
from wan22_jax.convert.animate import load_animate, load_clip, load_relighting_lora, with_lora
from wan22_jax.convert.vae import load_vae
from wan22_jax.errors import InputError, InputFileError, InsufficientMemoryError
from wan22_jax.models.animate.model_animate import ANIMATE_PRESETS
from wan22_jax.pipeline import AnimatePipeline, Wan22Pipeline, memory
from wan22_jax.pipeline.animate import generate_animate, noise_shape

CFG = ANIMATE_PRESETS["tiny-animate"]  # text_dim 24, text_len 12, 16 x 16 face crops


def _shell(text_encoder=None):
    """A pipeline without weights: every check of the call runs before the first one is needed."""
    return AnimatePipeline(None, CFG, None, None, None, text_encoder, no_text_encoder_reason="no tokenizer here")


def _inputs(t=9, face_t=None):
    return dict(ref_image=np.zeros((32, 48, 3), np.uint8), pose_video=np.zeros((t, 32, 48, 3), np.uint8),
                face_video=np.zeros((face_t or t, 16, 16, 3), np.uint8), clip_len=5,
                prompt_embeds=np.zeros((3, 24), np.float32), negative_prompt_embeds=np.zeros((2, 24), np.float32))


@pytest.mark.parametrize("over,err,match", [
    (dict(face_video=np.zeros((8, 16, 16, 3), np.uint8)), InputError, "face video has 8 frames but the pose"),
    (dict(pose_video=np.zeros((4, 32, 48, 3), np.uint8), face_video=np.zeros((4, 16, 16, 3), np.uint8)),
     InputError, "pose video has 4 frames, fewer than one clip of 5"),
    (dict(mode="replace"), InputError, "replace mode needs background video, mask video"),
    (dict(mode="replace", bg_video=np.zeros((9, 32, 48, 3), np.uint8), mask_video=np.zeros((7, 32, 48, 3), np.uint8)),
     InputError, "mask video has 7 frames but the pose video has 9"),
    (dict(ref_image="/nonexistent/ref.png"), InputFileError, "reference image /nonexistent/ref.png: no such file"),
    (dict(prompt_embeds=np.zeros((3, 16), np.float32)), InputError, r"prompt_embeds has shape \(3, 16\); expected"),
    (dict(prompt_embeds=None), InputError, r"no text encoder: pass prompt_embeds.*\(no tokenizer here\)"),
    (dict(num_inference_steps=0), InputError, "num_inference_steps=0"),
    (dict(solver="nope"), InputError, "nope"),
])
def test_call_errors_before_compute(over, err, match):
    with pytest.raises(err, match=match):
        _shell()(**{**_inputs(), **over})


def test_a_request_that_cannot_fit_is_refused_before_compute(monkeypatch):
    """_shell() has no weights: the refusal comes before any model is needed."""
    # 2 clips of 5 frames over 9 pose frames at 48x32: one clip's 6 float32 latents [16, 3, 4, 6] and its decoded
    # 5 frames, plus the whole 9-frame video
    need = 6 * 4 * 16 * 3 * 4 * 6 + 4 * 3 * 5 * 32 * 48 + 4 * 3 * 9 * 32 * 48
    assert _shell().check_memory(2, 5, 9, 32, 48) == need
    monkeypatch.setattr(memory, "available_bytes", lambda devices: (need - 1, "RAM"))
    with pytest.raises(InsufficientMemoryError, match=r"2 clip\(s\) of 5 frames at 48x32 needs 0.0 GiB, 0.0 GiB RAM "
                       r"available; try a shorter pose video, a shorter clip_len \(--frames\), a smaller pose "
                       r"video, a mesh over more devices"):
        _shell()(**_inputs())


def test_from_pretrained_names_a_missing_lora_and_a_non_animate_folder(tmp_path):
    ckpt = REFERENCE_DIR / "pipe_animate" / "checkpoint"  # has no relighting_lora.ckpt
    with pytest.raises(InputFileError, match="relighting_lora.ckpt: no such file"):
        AnimatePipeline.from_pretrained(ckpt, use_relighting_lora=True, progress=False)
    with pytest.raises(InputError, match="not an Animate-14B folder"):
        AnimatePipeline.from_pretrained(tmp_path, progress=False)
    with pytest.raises(InputError, match="animate-14B has no embedded model"):
        Wan22Pipeline.from_pretrained(task="animate-14B", progress=False)


@pytest.mark.slow
def test_wan22_pipeline_loads_an_animate_folder_and_runs_generate_animate():
    """The call = `generate_animate` (checked against the official by pipe_animate_replace) on the same modules,
    with the noise `jax.random.normal(key(seed))` of the R clips."""
    case = REFERENCE_DIR / "pipe_animate_replace"
    ckpt, inp = case / "checkpoint", load_file(case / "inputs.safetensors")
    pipe = Wan22Pipeline.from_pretrained(ckpt, dtype="fp32", progress=False)
    assert isinstance(pipe, AnimatePipeline) and pipe.text_encoder is None and not pipe.relighting_lora
    lit = AnimatePipeline.from_pretrained(ckpt, dtype="fp32", use_relighting_lora=True, progress=False)
    ctx, neg = np.full((3, 24), 0.1, np.float32), np.full((2, 24), -0.1, np.float32)
    args = dict(ref_image=inp["ref_image_uint8"], pose_video=inp["pose_video_uint8"],
                face_video=inp["face_video_uint8"], bg_video=inp["bg_video_uint8"], mask_video=inp["mask_video_uint8"])
    out = lit(**args, mode="replace", prompt_embeds=ctx, negative_prompt_embeds=neg, clip_len=5,
              num_inference_steps=3, seed=4, progress=False)
    assert out.frames.shape == (1, 9, 48, 32, 3) and out.latents.shape == (2, 16, 3, 6, 4)

    dit = load_animate(ckpt)
    dit = with_lora(dit, *load_relighting_lora(ckpt, dit.cfg))
    noise = np.asarray(jax.random.normal(jax.random.key(4), noise_shape(2, 5, 48, 32)))
    want = generate_animate(dit, load_vae(ckpt, version="2.1", dtype=jnp.float32), load_clip(ckpt), context=ctx,
                            context_null=neg, noise=noise, replace=True, clip_len=5, steps=3,
                            mask_video=inp["mask_video_uint8"], trajectory=False,
                            **{k: v for k, v in args.items() if k != "mask_video"})
    np.testing.assert_allclose(out.video[0], want.video, atol=1e-5)
    plain = pipe(**args, mode="replace", prompt_embeds=ctx, negative_prompt_embeds=neg, clip_len=5,
                 num_inference_steps=3, seed=4, progress=False)
    assert np.abs(plain.latents - out.latents).max() > 1e-3  # the merged LoRA changes the run


@pytest.mark.slow
def test_tiny_random_preset_runs_both_modes_from_its_seed():
    pipe = random_animate_pipeline()
    rng = np.random.default_rng(0)
    pose = rng.integers(0, 255, (9, 32, 48, 3), np.uint8)
    args = dict(ref_image=rng.integers(0, 255, (20, 30, 3), np.uint8), pose_video=pose,
                face_video=rng.integers(0, 255, (9, 16, 16, 3), np.uint8), progress=False, prompt="a cat")
    a = pipe(**args, seed=1)
    assert a.frames.shape == (1, 9, 32, 48, 3) and a.videos[0].fps == 16
    b = pipe.animate(**args, seed=1, mode="replace", bg_video=pose, mask_video=pose[..., :1].repeat(3, -1))
    assert b.frames.shape == a.frames.shape and np.abs(a.video - b.video).max() > 1e-3
    np.testing.assert_array_equal(pipe(**args, seed=1).frames, a.frames)
