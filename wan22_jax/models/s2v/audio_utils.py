"""Audio conditioning of the S2V DiT (official `audio_utils.py`: `CausalAudioEncoder`, `AudioInjector_WAN`).

* `CausalAudioEncoder`: mixes the 25 wav2vec2 hidden states with softmax-like weights silu(w) / sum(silu(w)) and
  compresses them per latent frame (`MotionEncoder_tc`).
* `AudioInjector`: after some DiT blocks, each latent frame's video tokens attend to that frame's audio tokens
  (a cross-attention with RMS-normed q/k, like the DiT's), after an AdaLN driven by the frame's global audio token.
  The injectors are stacked on a leading axis (one per injected block) so that the DiT's block scan can pick one
  by index.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.models.dit import LayerNorm, SelfAttention
from wan22_jax.models.layers import Linear, ones_init, param
from wan22_jax.models.s2v.auxi_blocks import MotionEncoder_tc
from wan22_jax.ops import XLA, Kernels, attention


def injector_ids(num_layers: int, inject_layers: tuple[int, ...]) -> tuple[int, dict[int, int]]:
    """(number of injectors, {block index: injector index}) exactly as the official constructor numbers them.

    The official code matches the substring `transformer_blocks.{k}` against each block's module name
    `root.transformer_blocks.{i}`, so a listed k also claims every block whose index starts with the digits of k
    (k = 1 claims blocks 1 and 10-19); each match gets the next injector and the dict keeps the last one per k.
    The release list (0, 4, 8, ..., 39 over 40 blocks) has no such collision; others are reproduced as they are.
    """
    ids: dict[int, int] = {}
    count = 0
    for i in range(num_layers):
        for k in inject_layers:
            if f"transformer_blocks.{k}" in f"root.transformer_blocks.{i}":
                ids[k] = count
                count += 1
    return count, {k: v for k, v in ids.items() if 0 <= k < num_layers}


class CausalAudioEncoder(nnx.Module):
    """[B, num_layers, audio_dim, T] wav2vec2 features -> (local [B, T', n + 1, dim], global [B, T', 1, dim])."""

    def __init__(self, audio_dim: int, out_dim: int, num_token: int, need_global: bool, num_layers: int = 25, *,
                 dtype=jnp.float32, param_dtype=jnp.float32, kernels: Kernels = XLA,
                 rngs: nnx.Rngs | None = None):
        self.encoder = MotionEncoder_tc(audio_dim, out_dim, num_token, need_global, dtype=dtype,
                                        param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.weights = param(rngs, ones_init, (1, num_layers, 1, 1), (None, None, None, None), param_dtype)

    def __call__(self, features):
        # the official mix runs in fp32 (autocast disabled): (f * w) / sum(w), summed over the layers
        w = jax.nn.silu(self.weights[...].astype(jnp.float32))
        mixed = jnp.sum((features.astype(jnp.float32) * w) / jnp.sum(w, axis=1, keepdims=True), axis=1)
        return self.encoder(jnp.swapaxes(mixed, 1, 2))  # [B, T, audio_dim]


@dataclasses.dataclass(frozen=True)
class _AttnDims:
    """What SelfAttention's constructor reads from a DiT config."""
    dim: int
    num_heads: int
    eps: float = 1e-6


class AudioCrossAttention(SelfAttention):
    """Official `WanCrossAttention` used on audio tokens: q from the video tokens, k/v from the audio tokens of
    the same frame (all of them: no padding, no mask), RMS norm over the full width on q and k."""

    def __call__(self, x, context):
        # x [N, Lq, D], context [N, Lk, D] -> [N, Lq, D]
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(context)))
        v = self._heads(self.v(context))
        out = attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                        impl=self.kernels.attention)
        return self.o(out.astype(q.dtype).reshape(x.shape[0], x.shape[1], -1))


class AdaLayerNorm(nnx.Module):
    """diffusers' AdaLayerNorm(chunk_dim=1): LN(x) (no affine, eps 1e-5) * (1 + scale) + shift with
    [shift, scale] = Linear(SiLU(temb)) split in halves."""

    def __init__(self, dim: int, *, param_dtype, stack, kernels, rngs):
        self.linear = Linear(dim, 2 * dim, axes=("embed", "embed_out"), dtype=jnp.float32, param_dtype=param_dtype,
                             stack=stack, kernels=kernels, rngs=rngs)
        self.norm = LayerNorm(dim, 1e-5)

    def __call__(self, x, temb):
        # x [N, L, D], temb [N, D]
        shift, scale = jnp.split(self.linear(jax.nn.silu(temb.astype(jnp.float32))), 2, axis=-1)
        return self.norm(x.astype(jnp.float32)) * (1 + scale[:, None]) + shift[:, None]


class AudioInjector(nnx.Module):
    """The stacked per-block audio cross-attentions (`injector`) and their AdaLNs (`injector_adain_layers`)."""

    def __init__(self, dim: int, num_heads: int, count: int, enable_adain: bool, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        self.injector = AudioCrossAttention(_AttnDims(dim, num_heads), dtype=dtype, param_dtype=param_dtype,
                                            stack=count, kernels=kernels, rngs=rngs)
        self.injector_adain_layers = (AdaLayerNorm(dim, param_dtype=param_dtype, stack=count, kernels=kernels,
                                                   rngs=rngs) if enable_adain else None)
        # without AdaLN the official model normalises with a parameter-free LayerNorm (eps 1e-6)
        self.pre_norm = LayerNorm(dim, 1e-6)

    def inject(self, index, video, local, glob):
        """Adds injector `index`'s output to the video tokens.

        Args:
          index: int32 scalar (may be traced): which injector.
          video: [B, F * n, D] video tokens (frame-major), local: [B, F, Lk, D], glob: [B, F, 1, D] or None.
        Returns:
          [B, F * n, D] video tokens with the audio cross-attention added.
        """
        b, l, d = video.shape
        f = local.shape[1]
        graphdef, state = nnx.split(self)
        one = nnx.merge(graphdef, jax.tree.map(lambda a: a[index], state))
        frames = video.reshape(b * f, l // f, d)
        if one.injector_adain_layers is not None:
            h = one.injector_adain_layers(frames, glob.reshape(b * f, d))
        else:
            h = one.pre_norm(frames)
        out = one.injector(h, local.reshape(b * f, local.shape[2], d))
        return video + out.reshape(b, l, d).astype(video.dtype)
