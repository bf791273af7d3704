"""Parity runner for the VAE components: vae21/vae22 encode and decode (official wrappers, normalised latents)
and diffusers_vae (AutoencoderKLWan, raw latents).

Works on any case folder of that format: the checkpoint decides the version and sizes, the inputs the shapes.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from wan22_jax.convert.vae import load_vae
from wan22_jax.errors import UnsupportedComponentError
from wan22_jax.models.vae import decode, encode
from wan22_jax.ops import XLA, Kernels, with_kernels

# component -> (version the checkpoint must hold or None, normalised latents?)
_COMPONENTS = {
    "vae21_encode": ("2.1", True),
    "vae21_decode": ("2.1", True),
    "vae22_encode": ("2.2", True),
    "vae22_decode": ("2.2", True),
    "diffusers_vae": (None, False),
}


def run(case, *, kernels: Kernels = XLA, **options) -> dict[str, np.ndarray]:
    """Runs every output the case asks for: `latent`/`latent_mean` from `video`, `video`/`decoded` from
    `latent`; an output name it does not know is left out, so the comparison fails it ("not produced").
    Options: tiling, slice_batch (forwarded to encode/decode)."""
    if case.component not in _COMPONENTS:
        raise UnsupportedComponentError(f"verify.vae does not handle component {case.component!r}")
    version, normalize = _COMPONENTS[case.component]
    vae = with_kernels(load_vae(case.checkpoint, version=version), kernels)
    graphdef, state = nnx.split(vae)
    out = {}
    for name in case.outputs:
        if name in ("latent", "latent_mean"):
            y = encode(graphdef, state, case.inputs["video"], normalize=normalize, **options)
        elif name in ("video", "decoded"):
            y = decode(graphdef, state, case.inputs["latent"], normalize=normalize, **options)
        else:
            continue
        out[name] = np.asarray(y)
    return out
