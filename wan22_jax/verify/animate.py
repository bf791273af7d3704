"""Parity runners for the Animate-14B modules: `animate_dit` (WanAnimateModel, with and without the relighting
LoRA) and `animate_clip` (the CLIP image encoder as `CLIPModel.visual` runs it).

animate_dit: inputs x, t, context, y, clip_fea, pose_latents, face_pixel_values; outputs `out`, `face_motion`,
`motion_vec` and `out_relight_lora` (the same call after merging `checkpoint/relighting_lora.ckpt` through our
LoRA arithmetic, `wan22_jax.training.lora.apply_lora`). animate_clip: input `images` [B, 3, H, W] in [-1, 1],
output `features` [B, 257, vision_dim].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.animate import LORA_FILE, load_animate, load_clip, load_relighting_lora, with_lora
from wan22_jax.convert.t5 import load_t5
from wan22_jax.convert.vae import load_vae
from wan22_jax.errors import InputError
from wan22_jax.models.animate.clip import CLIP_MEAN, CLIP_STD
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.pipeline.animate import VAE_STRIDE, generate_animate


@jax.jit
def _dit_forward(graphdef, state, x, t, clip_fea, context, y, pose_latents, face_pixel_values):
    out, inter = nnx.merge(graphdef, state)(x, t, clip_fea, context, y=y, pose_latents=pose_latents,
                                             face_pixel_values=face_pixel_values, return_intermediates=True)
    return out, inter["face_motion"], inter["motion_vec"]


@jax.jit
def _clip_forward(graphdef, state, images):
    return nnx.merge(graphdef, state)(images)


def _run_dit(case, kernels: Kernels) -> dict[str, np.ndarray]:
    model = with_kernels(load_animate(case.checkpoint), kernels)
    inp = {k: jnp.asarray(v) for k, v in case.inputs.items()}
    pt, ph, pw = model.cfg.patch_size
    _, _, f, h, w = inp["x"].shape
    tokens = (f // pt) * (h // ph) * (w // pw)
    seq_len = case.call.get("seq_len", tokens)
    if seq_len != tokens:
        # the official model pads to seq_len, and its face blocks then group tokens by seq_len / F: only the
        # exact token count (what WanAnimate.generate passes on one GPU) is meaningful
        raise InputError(f"{case.dir}: seq_len {seq_len} != the {tokens} tokens of x; only seq_len == tokens is "
                         "supported")
    args = (inp["x"], inp["t"], inp["clip_fea"], inp["context"], inp["y"], inp["pose_latents"],
            inp["face_pixel_values"])
    out, face_motion, motion_vec = _dit_forward(*nnx.split(model), *args)
    result = {"out": out, "face_motion": face_motion, "motion_vec": motion_vec}
    if (case.checkpoint / LORA_FILE).is_file():
        adapters, lora_cfg = load_relighting_lora(case.checkpoint, model.cfg, alpha=case.call.get("lora_alpha"))
        if "lora_rank" in case.call and case.call["lora_rank"] != lora_cfg.rank:
            raise InputError(f"{case.dir}: case says LoRA rank {case.call['lora_rank']}, the file holds rank "
                             f"{lora_cfg.rank}")
        lit = with_lora(model, adapters, lora_cfg, scale=case.call.get("lora_scaling", 1.0))
        result["out_relight_lora"] = _dit_forward(*nnx.split(lit), *args)[0]
    return {k: np.asarray(v, np.float32) for k, v in result.items()}


def _run_clip(case, kernels: Kernels) -> dict[str, np.ndarray]:
    model = with_kernels(load_clip(case.checkpoint), kernels)
    call = case.call
    cfg = model.cfg
    for key, ours in (("image_size", cfg.image_size), ("patch_size", cfg.patch_size)):
        if key in call and call[key] != ours:
            raise InputError(f"{case.dir}: case {key} {call[key]} != the checkpoint's {ours}")
    for key, ours in (("mean", CLIP_MEAN), ("std", CLIP_STD)):
        if key in call and tuple(call[key]) != ours:
            raise InputError(f"{case.dir}: case {key} {call[key]} != the CLIP normalisation {ours}")
    if call.get("use_31_block", True) is not True:
        raise InputError(f"{case.dir}: only use_31_block=True (what WanAnimate runs) is implemented")
    images = jnp.asarray(case.inputs["images"])
    return {"features": np.asarray(_clip_forward(*nnx.split(model), images), np.float32)}


@jax.jit
def _t5(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)


def trimmed_context(t5, ids, mask) -> np.ndarray:
    """What the official T5EncoderModel returns: the encoder over all text_len tokens, trimmed to the prompt."""
    hidden = _t5(*nnx.split(t5), jnp.asarray(ids[None], jnp.int32), jnp.asarray(mask[None], jnp.int32))
    return np.array(hidden[0], np.float32)[: int(mask.sum())]


def _run_pipe(case, kernels: Kernels) -> dict[str, np.ndarray]:
    """`WanAnimate.generate` with token ids (no tokenizer) and the case's noise."""
    call, inp = case.call, case.inputs
    for key, want in (("sample_solver", "dpm++"), ("vae_stride", list(VAE_STRIDE)), ("patch_size", [1, 2, 2])):
        if call.get(key, want) != want:
            raise InputError(f"{case.dir}: {key} {call[key]!r} is not the Animate-14B value {want!r}")
    ckpt = case.checkpoint
    dit = load_animate(ckpt)
    if call.get("use_relighting_lora", False):
        adapters, lora_cfg = load_relighting_lora(ckpt, dit.cfg, alpha=call.get("lora_alpha"))
        dit = with_lora(dit, adapters, lora_cfg)
    dit = with_kernels(dit, kernels)
    vae = with_kernels(load_vae(ckpt, version="2.1"), kernels)
    clip = with_kernels(load_clip(ckpt), kernels)
    t5 = with_kernels(load_t5(ckpt, dtype=jnp.float32, param_dtype=jnp.float32), kernels)
    context = trimmed_context(t5, inp["prompt_ids"], inp["prompt_mask"])
    context_null = trimmed_context(t5, inp["neg_prompt_ids"], inp["neg_prompt_mask"])
    res = generate_animate(dit, vae, clip, context=context, context_null=context_null,
                           ref_image=inp["ref_image_uint8"], pose_video=inp["pose_video_uint8"],
                           face_video=inp["face_video_uint8"], noise=inp["noise"],
                           bg_video=inp.get("bg_video_uint8"), mask_video=inp.get("mask_video_uint8"),
                           replace=call["replace_flag"], clip_len=call["clip_len"], refert_num=call["refert_num"],
                           steps=call["sampling_steps"], shift=call["shift"], guide_scale=call["guide_scale"],
                           solver=call["sample_solver"])
    out = {"context": context, "context_null": context_null, **dataclasses.asdict(res)}
    return {k: np.asarray(v) for k, v in out.items()}


def run(case, *, kernels: Kernels = XLA, **options) -> dict[str, np.ndarray]:
    """Runs one case in fp32 with `kernels` (XLA unless asked)."""
    if options:
        raise InputError(f"animate runner: unsupported option(s) {sorted(options)}")
    if case.component == "animate_clip":
        return _run_clip(case, kernels)
    if case.component in ("pipe_animate", "pipe_animate_replace"):
        return _run_pipe(case, kernels)
    return _run_dit(case, kernels)
