"""Parity runner for `t5_encoder` (official .pth + t5_config.json in checkpoint/) and `diffusers_t5`
(transformers UMT5EncoderModel in checkpoint/text_encoder/) cases.

Inputs `ids`, `mask` [B, L]; output `hidden` [B, L, dim] for every position, in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.convert.t5 import load_t5, open_t5_checkpoint
from wan22_jax.errors import InputError
from wan22_jax.models.t5 import t5_forward, validate_inputs
from wan22_jax.ops import XLA, Kernels, with_kernels

LAYOUTS = {"t5_encoder": "official", "diffusers_t5": "diffusers"}


def run(case, *, kernels: Kernels = XLA, **options) -> dict[str, np.ndarray]:
    """Runs one case in fp32 with `kernels` (XLA unless asked)."""
    if options:
        raise InputError(f"t5 runner: unsupported option(s) {sorted(options)}")
    folder = case.checkpoint / case.call.get("checkpoint_subfolder", "")
    layout = open_t5_checkpoint(folder).layout
    if layout != LAYOUTS[case.component]:
        raise InputError(f"{case.dir}: component {case.component!r} expects the {LAYOUTS[case.component]} "
                         f"layout, but {folder} holds the {layout} one")
    model = with_kernels(load_t5(folder, dtype=jnp.float32, param_dtype=jnp.float32), kernels)
    ids, mask = validate_inputs(case.inputs["ids"], case.inputs["mask"], model.cfg)
    graphdef, state = nnx.split(model)
    # fp32 parity needs true fp32 matmuls (GPUs would otherwise be allowed TF32)
    with jax.default_matmul_precision("highest"):
        hidden = t5_forward(graphdef, state, jnp.asarray(ids), jnp.asarray(mask))
    return {"hidden": np.asarray(hidden, dtype=np.float32)}
