"""Parity runners for `s2v_dit` (official WanModel_S2V forward) and `s2v_audio` (AudioEncoder +
WanS2V.encode_audio) cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.s2v import load_s2v
from wan22_jax.convert.wav2vec2 import load_wav2vec2
from wan22_jax.errors import InputError
from wan22_jax.models.s2v.audio_encoder import encode_audio
from wan22_jax.ops import XLA, Kernels, with_kernels

WAV2VEC_FOLDER = "wav2vec2-large-xlsr-53-english"  # hard-coded by the official speech2video.py


@jax.jit(static_argnames=("motion_frames", "add_last_motion", "drop_motion_frames"))
def _forward(graphdef, state, inputs, motion_frames, add_last_motion, drop_motion_frames):
    model = nnx.merge(graphdef, state)
    out, inter = model(inputs["x"], inputs["t"], inputs["context"], ref_latents=inputs["ref_latents"],
                       motion_latents=inputs["motion_latents"], cond_states=inputs.get("cond_states"),
                       audio_input=inputs["audio_input"], motion_frames=motion_frames,
                       add_last_motion=add_last_motion, drop_motion_frames=drop_motion_frames,
                       return_intermediates=True)
    return out, inter["audio_emb_local"], inter["audio_emb_global"]


def _run_dit(case, kernels):
    call = case.call
    model = load_s2v(case.checkpoint)
    graphdef, state = nnx.split(with_kernels(model, kernels))
    inputs = {k: jnp.asarray(v) for k, v in case.inputs.items()}
    static = dict(motion_frames=tuple(call.get("motion_frames", (73, 19))),
                  add_last_motion=int(call.get("add_last_motion", 2)))
    results = {}
    variants = call.get("variants", {"out": {"drop_motion_frames": False}})
    for name, variant in variants.items():
        out, local, glob = _forward(graphdef, state, inputs, drop_motion_frames=bool(variant["drop_motion_frames"]),
                                    **static)
        results[name] = out
        results["audio_emb_local"], results["audio_emb_global"] = local, glob
    return results


def _run_audio(case, kernels):
    call = case.call
    if call.get("sampling_rate", 16000) != 16000:
        raise InputError(f"case {case.name}: sampling_rate {call['sampling_rate']}; wav2vec2 runs at 16000")
    model = with_kernels(load_wav2vec2(case.checkpoint / WAV2VEC_FOLDER), kernels)
    # The case was made with transformers 5.x, whose hidden_states end with the last layer's raw output (4.x put
    # the final LayerNorm's output there; models/s2v/wav2vec2.py).
    out = encode_audio(model, case.inputs["waveform"], int(call["infer_frames"]), fps=int(call.get("fps", 16)),
                       m=int(call.get("audio_sample_m", 0)), last_normed=False)
    out["num_repeat"] = np.asarray([out["num_repeat"]], np.int64)
    return out


def run(case, *, kernels: Kernels = XLA, **options):
    if case.component == "s2v_audio":
        return _run_audio(case, kernels)
    return _run_dit(case, kernels)
