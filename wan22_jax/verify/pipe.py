"""Parity runner for the pipeline cases (official WanT2V / WanI2V / WanTI2V `generate`, tokenizer bypassed).

The case gives token ids (so no tokenizer is needed) and the initial noise (torch's RNG is not reproducible);
everything else runs through `Wan22Pipeline` exactly as a user's call would.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.configs import get_task
from wan22_jax.convert.dit import load_dit
from wan22_jax.convert.t5 import load_t5
from wan22_jax.convert.vae import load_vae
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.pipeline import EXPERTS, Wan22Pipeline

TASK_OF = {"pipe_t2v_moe": "t2v-A14B", "pipe_i2v_moe": "i2v-A14B", "pipe_ti2v_i2v": "ti2v-5B",
           "pipe_ti2v_t2v": "ti2v-5B"}


def _trimmed_context(t5, ids, mask):
    """What the official T5EncoderModel.__call__ returns: the encoder over all text_len tokens, trimmed."""
    hidden = jax.jit(lambda g, s, i, m: nnx.merge(g, s)(i, m), static_argnums=0)(
        *nnx.split(t5), jnp.asarray(ids[None], jnp.int32), jnp.asarray(mask[None], jnp.int32))
    return np.array(hidden[0], np.float32)[: int(mask.sum())]  # a copy: a view could outlive its buffer


def run(case, *, kernels: Kernels = XLA, **options):
    call, inp = case.call, case.inputs
    task = get_task(TASK_OF[case.component])
    task = dataclasses.replace(task, boundary=call.get("boundary", task.boundary),
                               num_train_timesteps=call["num_train_timesteps"],
                               vae_stride=tuple(call["vae_stride"]), patch_size=tuple(call["patch_size"]))
    ckpt = case.checkpoint
    folders = {e: ckpt / e for e in EXPERTS} if task.two_experts else {"model": ckpt}
    experts = {n: nnx.split(with_kernels(load_dit(f), kernels)) for n, f in folders.items()}
    dit_cfg = nnx.merge(*next(iter(experts.values()))).cfg
    vae = with_kernels(load_vae(ckpt, version=call["vae_version"]), kernels)
    pipe = Wan22Pipeline(task, experts, dit_cfg, nnx.split(vae), vae.config, dtype=jnp.float32)

    t5 = with_kernels(load_t5(ckpt, dtype=jnp.float32, param_dtype=jnp.float32), kernels)
    context = _trimmed_context(t5, inp["prompt_ids"], inp["prompt_mask"])
    context_null = _trimmed_context(t5, inp["neg_prompt_ids"], inp["neg_prompt_mask"])

    gs = call["guide_scale"]
    kwargs = dict(prompt_embeds=context[None], negative_prompt_embeds=context_null[None],
                  num_frames=call["frame_num"], num_inference_steps=call["sampling_steps"],
                  guidance_scale=tuple(gs) if isinstance(gs, list) else gs, solver=call["sample_solver"],
                  shift=call["shift"], latents=inp["noise"][None], return_trajectory=True, progress=False)
    if "image_uint8" in inp:
        kwargs.update(image=inp["image_uint8"], max_area=call["max_area"])
    else:
        kwargs.update(width=call["size"][0], height=call["size"][1])
    out = pipe(**kwargs)
    result = {
        "context": context, "context_null": context_null, "timesteps": out.timesteps,
        "latents_per_step": out.trajectory["samples"][1:, 0], "noise_pred_per_step": out.trajectory["velocities"][:, 0],
        "latents": out.latents[0], "video": out.video[0],
    }
    if out.cond_latent is not None:
        result["cond_latent"] = out.cond_latent
    return result
