"""Parity runner for `pipe_s2v` (official `WanS2V.generate`, tokenizer bypassed, explicit initial noise).

It composes our pieces the way `generate` does: umT5 contexts, the audio path, VAE latents of the reference
image, of the 73-frame motion video and of the pose clips, then per clip a UniPC loop over the S2V DiT with
classifier-free guidance (uncond: negative prompt and silent audio), the decode, and the motion video shifted
by the new frames and re-encoded for the next clip.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.s2v import load_s2v
from wan22_jax.convert.t5 import load_t5
from wan22_jax.convert.vae import load_vae
from wan22_jax.convert.wav2vec2 import load_wav2vec2
from wan22_jax.errors import InputError
from wan22_jax.models.s2v.audio_encoder import encode_audio
from wan22_jax.models.vae import decode, encode
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.samplers.loop import sample
from wan22_jax.samplers.schedule import official_schedule
from wan22_jax.samplers.unipc import FlowUniPC
from wan22_jax.verify.pipe import _trimmed_context
from wan22_jax.verify.s2v import WAV2VEC_FOLDER


def _pixels(frames_uint8: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [1, 3, T, H, W] float32 in [-1, 1] (to_tensor * 2 - 1, as officially)."""
    x = frames_uint8.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    return np.transpose(x, (3, 0, 1, 2))[None]


@functools.partial(jax.jit, static_argnames=("steps", "shift", "num_train", "guide_scale", "motion_frames",
                                             "drop_motion_frames"))
def _clip(graphdef, state, noise, context, context_null, ref, motion, cond, audio, *, steps, shift, num_train,
          guide_scale, motion_frames, drop_motion_frames):
    model = nnx.merge(graphdef, state)
    kv, kv_null = model.encode_context(context), model.encode_context(context_null)
    common = dict(ref_latents=ref, motion_latents=motion, cond_states=cond, motion_frames=motion_frames,
                  drop_motion_frames=drop_motion_frames)

    def velocity(x, t, i):
        tt = jnp.reshape(t, (1,))
        c = model(x, tt, context_kv=kv, audio_input=audio, **common)
        if guide_scale <= 1:  # official: no unconditional pass
            return c
        u = model(x, tt, context_kv=kv_null, audio_input=0.0 * audio, **common)
        return u + guide_scale * (c - u)

    schedule = official_schedule("unipc", steps, shift, num_train_timesteps=num_train)
    return sample(FlowUniPC(), velocity, noise, schedule, return_trajectory=True)


def run(case, *, kernels: Kernels = XLA, **options):
    call, inp = case.call, case.inputs
    if call.get("sample_solver", "unipc") != "unipc":
        raise InputError(f"case {case.name}: sample_solver {call['sample_solver']!r}; this runner runs unipc")
    ckpt = case.checkpoint
    dit = nnx.split(with_kernels(load_s2v(ckpt), kernels))
    vae = nnx.split(with_kernels(load_vae(ckpt, version="2.1"), kernels))
    enc = lambda v: np.asarray(encode(*vae, jnp.asarray(v)))  # noqa: E731
    dec = lambda z: np.asarray(decode(*vae, jnp.asarray(z)))  # noqa: E731

    t5 = with_kernels(load_t5(ckpt, dtype=jnp.float32, param_dtype=jnp.float32), kernels)
    context = _trimmed_context(t5, inp["prompt_ids"], inp["prompt_mask"])
    context_null = _trimmed_context(t5, inp["neg_prompt_ids"], inp["neg_prompt_mask"])

    infer = int(call["infer_frames"])
    audio = encode_audio(with_kernels(load_wav2vec2(ckpt / WAV2VEC_FOLDER), kernels), inp["waveform"], infer,
                         fps=int(call.get("fps", 16)), last_normed=False)  # transformers 5.x, see verify/s2v.py
    audio_emb = np.asarray(audio["audio_emb"])
    repeats = audio["num_repeat"] if call.get("num_repeat") is None else min(int(call["num_repeat"]),
                                                                            audio["num_repeat"])

    ref_pixels = _pixels(inp["ref_image_uint8"][None])  # [1, 3, 1, H, W]
    ref_latents = enc(ref_pixels)  # [1, 16, 1, h, w]
    _, _, _, height, width = ref_pixels.shape
    motion_frames = int(call["motion_frames"])
    last_frames = np.zeros((1, 3, motion_frames, height, width), np.float32)
    drop_first_motion = bool(call.get("drop_first_motion", True))
    if call.get("init_first_frame", False):  # official: the last 6 motion frames become the reference image
        drop_first_motion = False
        last_frames[:, :, -6:] = ref_pixels
    motion = enc(last_frames)

    if "pose_video_uint8" in inp:
        pose = _pixels(inp["pose_video_uint8"][:repeats * infer])
        pose = np.concatenate([pose, -np.ones((1, 3, repeats * infer - pose.shape[2], height, width), np.float32)],
                              axis=2)
        conds = [enc(np.concatenate([c[:, :, :1], c], axis=2))[:, :, 1:] for c in np.split(pose, repeats, axis=2)]
    else:  # official: COND[0] * 0
        stride = call.get("vae_stride", (4, 8, 8))
        conds = [np.zeros((1, 16, inp["noise"].shape[2], height // stride[1], width // stride[2]), np.float32)
                 ] * repeats

    static = dict(steps=int(call["sampling_steps"]), shift=float(call["shift"]),
                  num_train=int(call["num_train_timesteps"]), guide_scale=float(call["guide_scale"]),
                  motion_frames=(motion_frames, int(call["lat_motion_frames"])))
    out = {k: [] for k in ("motion_latents", "latents_per_step", "noise_pred_per_step", "latents")}
    video = []
    for r in range(repeats):
        drop = drop_first_motion and r == 0
        latents, traj = _clip(*dit, jnp.asarray(inp["noise"][r][None]), jnp.asarray(context[None]),
                              jnp.asarray(context_null[None]), jnp.asarray(ref_latents), jnp.asarray(motion),
                              jnp.asarray(conds[r]), jnp.asarray(audio_emb[..., r * infer:(r + 1) * infer]),
                              drop_motion_frames=drop, **static)
        latents = np.asarray(latents)
        out["motion_latents"].append(motion[0])
        out["latents_per_step"].append(np.asarray(traj["samples"][1:, 0]))
        out["noise_pred_per_step"].append(np.asarray(traj["velocities"][:, 0]))
        out["latents"].append(latents[0])
        image = dec(np.concatenate([ref_latents if drop else motion, latents], axis=2))[:, :, -infer:]
        if drop:
            image = image[:, :, 3:]
        overlap = min(motion_frames, image.shape[2])
        last_frames = np.concatenate([last_frames[:, :, overlap:], image[:, :, -overlap:]], axis=2)
        motion = enc(last_frames)
        video.append(image)
    schedule = official_schedule("unipc", static["steps"], static["shift"], num_train_timesteps=static["num_train"])
    result = {k: np.stack(v) for k, v in out.items()}
    result.update(context=context, context_null=context_null, audio_emb=audio_emb, ref_latents=ref_latents[0],
                  cond_latents=np.stack([c[0] for c in conds]), timesteps=np.asarray(schedule.timesteps),
                  video=np.concatenate(video, axis=2)[0])
    return result
