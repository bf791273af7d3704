"""Parity runner for `pipe_s2v` (official `WanS2V.generate`, tokenizer bypassed, explicit initial noise).

The preprocessing the case pins down is done here (umT5 contexts from the given ids, the audio features from the
given waveform); the clip loop itself is the pipeline's own (`wan22_jax.pipeline.s2v.generate_clips`): VAE latents
of the reference image, the 73-frame motion video and the pose clips, then per clip the sampling loop over the S2V
DiT with classifier-free guidance, the decode, and the motion video shifted by the new frames.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.s2v import load_s2v
from wan22_jax.convert.t5 import load_t5
from wan22_jax.convert.vae import load_vae
from wan22_jax.convert.wav2vec2 import load_wav2vec2
from wan22_jax.errors import InputError
from wan22_jax.models.s2v.audio_encoder import encode_audio
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.pipeline.s2v import SOLVERS, WAV2VEC_FOLDER, generate_clips
from wan22_jax.verify.pipe import _trimmed_context


def run(case, *, kernels: Kernels = XLA, **options):
    call, inp = case.call, case.inputs
    solver = call.get("sample_solver", "unipc")
    if solver not in SOLVERS:
        raise InputError(f"case {case.name}: sample_solver {solver!r}; S2V runs {SOLVERS}")
    ckpt = case.checkpoint
    dit = nnx.split(with_kernels(load_s2v(ckpt), kernels))
    vae = nnx.split(with_kernels(load_vae(ckpt, version="2.1"), kernels))
    t5 = with_kernels(load_t5(ckpt, dtype=jnp.float32, param_dtype=jnp.float32), kernels)
    context = _trimmed_context(t5, inp["prompt_ids"], inp["prompt_mask"])
    context_null = _trimmed_context(t5, inp["neg_prompt_ids"], inp["neg_prompt_mask"])

    infer = int(call["infer_frames"])
    # last_normed=False: the cases were made with transformers 5.x (see verify/s2v.py and S2VPipeline)
    audio = encode_audio(with_kernels(load_wav2vec2(ckpt / WAV2VEC_FOLDER), kernels), inp["waveform"], infer,
                         fps=int(call.get("fps", 16)), last_normed=False)
    audio_emb = np.asarray(audio["audio_emb"])
    repeats = audio["num_repeat"] if call.get("num_repeat") is None else min(int(call["num_repeat"]),
                                                                            audio["num_repeat"])
    if inp["noise"].shape[0] != repeats:
        raise InputError(f"case {case.name}: noise for {inp['noise'].shape[0]} clips, the call makes {repeats}")
    motion_frames = int(call["motion_frames"])
    if int(call["lat_motion_frames"]) != (motion_frames + 3) // 4:
        raise InputError(f"case {case.name}: lat_motion_frames {call['lat_motion_frames']} is not "
                         f"(motion_frames + 3) // 4")
    clips = generate_clips(
        dit, vae, context=context, context_null=context_null, ref_image=inp["ref_image_uint8"], audio_emb=audio_emb,
        noise=inp["noise"], pose_video=inp.get("pose_video_uint8"), infer_frames=infer,
        motion_frames=motion_frames, steps=int(call["sampling_steps"]), shift=float(call["shift"]),
        guide_scale=float(call["guide_scale"]), solver=solver,
        drop_first_motion=bool(call.get("drop_first_motion", True)),
        init_first_frame=bool(call.get("init_first_frame", False)),
        num_train_timesteps=int(call["num_train_timesteps"]))
    result = dataclasses.asdict(clips)
    result.update(context=context, context_null=context_null, audio_emb=audio_emb)
    return result
