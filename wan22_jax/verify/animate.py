"""Parity runners for the Animate-14B modules: `animate_dit` (WanAnimateModel, with and without the relighting
LoRA) and `animate_clip` (the CLIP image encoder as `CLIPModel.visual` runs it).

animate_dit: inputs x, t, context, y, clip_fea, pose_latents, face_pixel_values; outputs `out`, `face_motion`,
`motion_vec` and `out_relight_lora` (the same call after merging `checkpoint/relighting_lora.ckpt` through our
LoRA arithmetic, `wan22_jax.training.lora.apply_lora`). animate_clip: input `images` [B, 3, H, W] in [-1, 1],
output `features` [B, 257, vision_dim].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.animate import LORA_FILE, load_animate, load_clip, load_relighting_lora, with_lora
from wan22_jax.errors import InputError
from wan22_jax.models.animate.clip import CLIP_MEAN, CLIP_STD
from wan22_jax.ops import XLA, Kernels, with_kernels


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


def run(case, *, kernels: Kernels = XLA, **options) -> dict[str, np.ndarray]:
    """Runs one case in fp32 with `kernels` (XLA unless asked)."""
    if options:
        raise InputError(f"animate runner: unsupported option(s) {sorted(options)}")
    if case.component == "animate_clip":
        return _run_clip(case, kernels)
    return _run_dit(case, kernels)
