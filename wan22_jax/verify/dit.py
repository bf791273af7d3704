"""Parity runner for `wan_dit` (official WanModel) and `diffusers_dit` (WanTransformer3DModel) cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.convert.dit import load_dit
from wan22_jax.ops import XLA, Kernels, with_kernels


@jax.jit
def _forward(graphdef, state, x, t, context, y):
    return nnx.merge(graphdef, state)(x, t, context, y=y)


def run(case, *, kernels: Kernels = XLA, **options):
    inp = case.inputs
    if case.component == "diffusers_dit":
        x, t, context, y = inp["x"], inp["timestep"], inp["encoder_hidden_states"], None
        # Diffusers attends over exactly the rows it is given: no padding to a fixed text_len.
        model = load_dit(case.checkpoint, config_overrides={"text_len": context.shape[1]})
    else:
        x, t, context, y = inp["x"], inp["t"], inp["context"], inp.get("y")
        model = load_dit(case.checkpoint)
        if t.ndim == 2:  # per-token timesteps over seq_len rows; rows past the real tokens are padding
            pt, ph, pw = model.cfg.patch_size
            n_tokens = (x.shape[2] // pt) * (x.shape[3] // ph) * (x.shape[4] // pw)
            t = t[:, :n_tokens]
    graphdef, state = nnx.split(with_kernels(model, kernels))
    out = _forward(graphdef, state, jnp.asarray(x), jnp.asarray(t), jnp.asarray(context),
                   None if y is None else jnp.asarray(y))
    return {"out": out}
