"""The Animate-14B DiT (official `WanAnimateModel` in wan/modules/animate/model_animate.py).

It is the i2v DiT (x and the 20-channel y concatenated, 36 input channels) with four additions, built here from our
`WanModel` pieces rather than copied:

* pose: `pose_patch_embedding` of the pose latents [B, 16, F-1, H, W] is added to the tokens of latent frames
  1..F-1 (frame 0 is the reference-image slot);
* CLIP: `img_emb` (LN, Linear, GELU, Linear, LN) maps 257 CLIP image tokens to the DiT width; every
  cross-attention also attends to them with its own k_img / v_img / norm_k_img, and the two attention outputs
  are summed before `o`;
* face: the face crops run through the motion encoder (one motion vector per face frame) and the face encoder
  (4 + 1 tokens per latent frame, a zero frame prepended for the reference slot);
* after blocks 0, 5, 10, ... the FaceBlock number i / 5 adds its per-frame face attention to the residual stream.

The DiT blocks are stacked and scanned as in `WanModel`; the face blocks are stacked on their own `layers` axis
and the scan applies block i // 5 under a `lax.cond` when i % 5 == 0, so the program holds one DiT block and
one face block whatever the depth.

Several widths are literals in the official constructor (CLIP width 1280, face crops 512, the motion encoder's
channel table, the face encoder's 1024 / 4 heads): here they are config fields, read off the weight shapes by the
converter. Precision follows `WanModel` (docs/architecture.md §4); the parity cases run fp32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.animate.face_blocks import FaceBlock, FaceEncoder
from wan22_jax.models.animate.motion_encoder import MotionEncoder
from wan22_jax.models.dit import (BlockInputs, CrossAttention, DiTConfig, LayerNorm, RMSNorm, WanAttentionBlock,
                                  WanModel, padding_key_bias)
from wan22_jax.models.layers import Linear, normal_init, param, zeros_init
from wan22_jax.ops import XLA, Kernels, attention, matmul
from wan22_jax.sharding import pad_frames, shard
from wan22_jax.state import fill_state, flat_state

CLIP_TOKENS = 257  # a literal of the official cross-attention: the first 257 context rows are the image's
FACE_EVERY = 5  # a FaceBlock after every fifth DiT block (0, 5, 10, ...)
MOTION_CHANNELS_14B = (32, 64, 128, 256, 512, 512, 512, 512)  # EncoderApp's table at 512, 256, ..., 4 pixels


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnimateConfig(DiTConfig):
    """`WanAnimateModel` arguments plus the widths its constructor hard-codes (defaults: the Animate-14B release).

    model_type stays "i2v": the DiT part is an i2v DiT (36 input channels).
    image_dim: CLIP width (img_emb input). motion_encoder_dim: the motion vectors' width (the face encoder's input
    and the rows of the direction matrix). motion_encoder_size: face crop size S. motion_style_dim: the style
    vector's width. motion_dim: number of motion directions. motion_channels: the appearance encoder's width at
    S, S/2, ..., 4 pixels. face_hidden_dim / face_num_heads: the face encoder's per-head width and head count.
    """

    model_type: str = "i2v"
    text_len: int = 512
    in_dim: int = 36
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 40
    num_layers: int = 40
    motion_encoder_dim: int = 512
    image_dim: int = 1280
    motion_encoder_size: int = 512
    motion_style_dim: int = 512
    motion_dim: int = 20
    motion_channels: tuple[int, ...] = MOTION_CHANNELS_14B
    face_hidden_dim: int = 1024
    face_num_heads: int = 4

    def __post_init__(self):
        super().__post_init__()
        for name in ("motion_encoder_dim", "image_dim", "motion_encoder_size", "motion_style_dim", "motion_dim",
                     "face_hidden_dim", "face_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"AnimateConfig.{name} must be a positive integer, got {value!r}")
        if self.model_type != "i2v" or self.out_dim + 20 != self.in_dim:
            raise ConfigError(f"AnimateConfig: the Animate DiT is i2v-style (in_dim = out_dim + 20 = 36 with "
                              f"model_type 'i2v'), got model_type {self.model_type!r}, in_dim {self.in_dim}, "
                              f"out_dim {self.out_dim}")
        if self.patch_size[0] != 1:
            raise ConfigError(f"AnimateConfig.patch_size {self.patch_size}: the pose latents are added per latent "
                              "frame, which needs a temporal patch of 1")
        if self.num_layers % FACE_EVERY:
            raise ConfigError(f"AnimateConfig.num_layers {self.num_layers} must be a multiple of {FACE_EVERY} (one "
                              "face block per five DiT blocks, applied after blocks 0, 5, 10, ...)")
        size = self.motion_encoder_size
        if size < 4 or size & (size - 1):
            raise ConfigError(f"AnimateConfig.motion_encoder_size must be a power of two >= 4, got {size}")
        n = int(math.log2(size)) - 1
        if not isinstance(self.motion_channels, tuple) or len(self.motion_channels) != n:
            raise ConfigError(f"AnimateConfig.motion_channels must list {n} widths (at {size}, {size // 2}, ..., 4 "
                              f"pixels), got {self.motion_channels!r}")

    @property
    def num_face_blocks(self) -> int:
        return self.num_layers // FACE_EVERY


ANIMATE_PRESETS: dict[str, AnimateConfig] = {
    "animate-14B": AnimateConfig(),
    # the widths of the reference case animate_dit (tiny random model)
    "tiny-animate": AnimateConfig(text_len=12, dim=32, ffn_dim=64, freq_dim=32, text_dim=24, num_heads=2,
                                  num_layers=5, motion_encoder_dim=16, image_dim=32, motion_encoder_size=16,
                                  motion_style_dim=16, motion_dim=8, motion_channels=(8, 8, 16),
                                  face_hidden_dim=16, face_num_heads=4),
}


# ------------------------------------------------------------------------------------------------ blocks
class AnimateCrossAttention(CrossAttention):
    """o(attn(q, text K/V) + attn(q, image K/V)); image keys RMS-normalised by their own norm_k_img, no mask."""

    def __init__(self, cfg: AnimateConfig, *, dtype, param_dtype, stack, kernels, rngs):
        super().__init__(cfg, dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        lin = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.k_img = Linear(cfg.dim, cfg.dim, axes=("embed", "heads"), **lin)
        self.v_img = Linear(cfg.dim, cfg.dim, axes=("embed", "heads"), **lin)
        self.norm_k_img = RMSNorm(cfg.dim, cfg.eps, param_dtype=param_dtype, stack=stack, rngs=rngs)

    def kv_img(self, image_tokens):
        # image_tokens [B, 257, D] (img_emb output) -> k, v [B, 257, N, d]
        return self._heads(self.norm_k_img(self.k_img(image_tokens))), self._heads(self.v_img(image_tokens))

    def __call__(self, x, kv):
        k, v, k_img, v_img = kv
        q = shard(self._heads(self.norm_q(self.q(x))), ("batch", "tokens", "heads", None)).astype(self.dtype)
        text = attention(q, k.astype(self.dtype), v.astype(self.dtype),
                         key_bias=padding_key_bias(k.shape[1], self.text_len), impl=self.kernels.attention)
        image = attention(q, k_img.astype(self.dtype), v_img.astype(self.dtype), impl=self.kernels.attention)
        out = text.astype(jnp.float32) + image.astype(jnp.float32)
        return self.o(out.astype(x.dtype).reshape(x.shape[0], x.shape[1], -1))


class AnimateAttentionBlock(WanAttentionBlock):
    """`WanAttentionBlock` whose cross-attention also reads the CLIP image tokens (kv = (k, v, k_img, v_img))."""

    def __init__(self, cfg: AnimateConfig, *, dtype, param_dtype, stack, kernels, rngs):
        super().__init__(cfg, dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.cross_attn = AnimateCrossAttention(cfg, dtype=dtype, param_dtype=param_dtype, stack=stack,
                                                kernels=kernels, rngs=rngs)


class MLPProj(nnx.Module):
    """Official `MLPProj` (img_emb): LN(affine, eps 1e-5), Linear, GELU (erf), Linear, LN. Paths proj.0 .. proj.4."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype, param_dtype, kernels, rngs):
        lin = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        norm = dict(affine=True, param_dtype=param_dtype, rngs=rngs)
        self.proj = nnx.Dict({"0": LayerNorm(in_dim, 1e-5, **norm),
                              "1": Linear(in_dim, in_dim, axes=(None, "mlp"), **lin),
                              "3": Linear(in_dim, out_dim, axes=("mlp", "embed"), **lin),
                              "4": LayerNorm(out_dim, 1e-5, **norm)})

    def __call__(self, x):
        h = self.proj["1"](self.proj["0"](x.astype(jnp.float32)))
        return self.proj["4"](self.proj["3"](jax.nn.gelu(h, approximate=False)).astype(jnp.float32))


class FaceAdapter(nnx.Module):
    """Official `FaceAdapter`: `fuser_blocks`, num_layers / 5 FaceBlocks stacked on a `layers` axis."""

    def __init__(self, cfg: AnimateConfig, *, dtype, param_dtype, kernels, rngs):
        self.fuser_blocks = FaceBlock(cfg.dim, cfg.num_heads, dtype=dtype, param_dtype=param_dtype,
                                      stack=cfg.num_face_blocks, kernels=kernels, rngs=rngs)


# ------------------------------------------------------------------------------------------------ model
class WanAnimateModel(WanModel):
    """The Animate DiT. Call with channels-first latents, like the official model.

    Args (of __call__):
      x: [B, 16, F, H, W] noisy latent (frame 0: the reference slot).
      t: [B] timesteps in [0, 1000].
      clip_fea: [B, 257, image_dim] CLIP tokens of the reference image (`CLIPVisionEncoder` output).
      context: [B, Lc, text_dim] text embeddings, Lc <= text_len.
      y: [B, 20, F, H, W] 4 mask channels + 16 latent channels.
      pose_latents: [B, 16, F - 1, H, W].
      face_pixel_values: [B, 3, 4 (F - 2) + 1, S, S] face crops in [-1, 1], S = motion_encoder_size.
      context_kv: precomputed `encode_context(context, clip_fea)` (then context / clip_fea are unused).
      return_intermediates: also return {"face_motion": [B*T, motion_encoder_dim], "motion_vec": [B, F, 5, D],
        "patch_embedding": [B, L, D] (pose added), "blocks": [layers, B, L, D]}.
    Returns:
      [B, 16, F, H, W] fp32 velocity (and the intermediates).
    """

    def __init__(self, cfg: AnimateConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        if not isinstance(cfg, AnimateConfig):
            raise ConfigError(f"WanAnimateModel needs an AnimateConfig, got {type(cfg).__name__}")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        super().__init__(cfg, dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        d = cfg.dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        # the T2V blocks built by WanModel are replaced by blocks whose cross-attention also reads the image
        self.blocks = AnimateAttentionBlock(cfg, stack=cfg.num_layers, **kw)
        pt, ph, pw = cfg.patch_size
        self.pose_patch_embedding = nnx.Dict({
            "kernel": param(rngs, normal_init(0.02), (pt, ph, pw, cfg.out_dim, d), (None, None, None, None, "embed"),
                            param_dtype),
            "bias": param(rngs, zeros_init, (d,), ("embed",), param_dtype)})
        self.img_emb = MLPProj(cfg.image_dim, d, **kw)
        self.motion_encoder = MotionEncoder(size=cfg.motion_encoder_size, style_dim=cfg.motion_style_dim,
                                            motion_dim=cfg.motion_dim, out_dim=cfg.motion_encoder_dim,
                                            channels=cfg.motion_channels, **kw)
        self.face_adapter = FaceAdapter(cfg, **kw)
        self.face_encoder = FaceEncoder(cfg.motion_encoder_dim, cfg.face_hidden_dim, d, cfg.face_num_heads, **kw)

    # -------------------------------------------------------------------------------- pieces
    def encode_context(self, context, clip_fea):
        """Text and image keys/values of every layer: (k, v, k_img, v_img), each [layers, B, Lk, N, d].

        Text rows are zero-padded to text_len as in `WanModel.encode_context`; the image rows are the 257 CLIP
        tokens through img_emb."""
        cfg = self.cfg
        if clip_fea.ndim != 3 or clip_fea.shape[1:] != (CLIP_TOKENS, cfg.image_dim):
            raise InputError(f"clip_fea has shape {tuple(clip_fea.shape)}; expected [B, {CLIP_TOKENS}, "
                             f"{cfg.image_dim}] (CLIP tokens of the reference image)")
        if context.shape[0] != clip_fea.shape[0]:
            raise InputError(f"context has batch {context.shape[0]} but clip_fea has {clip_fea.shape[0]}")
        k, v = super().encode_context(context)
        image = self.img_emb(clip_fea)
        graphdef, state = nnx.split(self.blocks)
        k_img, v_img = jax.lax.map(lambda s: nnx.merge(graphdef, s).cross_attn.kv_img(image), state)
        return k, v, k_img, v_img

    def face_motion(self, face_pixel_values):
        """[B, 3, T, S, S] -> per-frame motion vectors [B * T, motion_encoder_dim] (motion_encoder.get_motion)."""
        cfg = self.cfg
        s = cfg.motion_encoder_size
        if face_pixel_values.ndim != 5 or face_pixel_values.shape[1] != 3 or face_pixel_values.shape[3:] != (s, s):
            raise InputError(f"face_pixel_values has shape {tuple(face_pixel_values.shape)}; expected "
                             f"[B, 3, T, {s}, {s}] face crops in [-1, 1]")
        frames = rearrange(face_pixel_values, "b c t h w -> (b t) c h w")
        return self.motion_encoder.get_motion(frames)

    def motion_tokens(self, motion, batch: int):
        """[B * T, C] motion vectors -> face tokens [B, 1 + ceil(T / 4), 5, D], a zero frame first."""
        motion = motion.reshape(batch, -1, motion.shape[-1])
        tokens = self.face_encoder(motion).astype(jnp.float32)
        return jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens], axis=1)

    def pose_tokens(self, pose_latents):
        """[B, 16, F-1, H, W] -> tokens [B, (F-1) H' W', D] (Conv3d with stride == kernel as a matmul)."""
        pt, ph, pw = self.cfg.patch_size
        tokens = rearrange(pose_latents, "b c (f p) (h q) (w r) -> b (f h w) (p q r c)", p=pt, q=ph, r=pw)
        kernel = self.pose_patch_embedding["kernel"][...]
        kernel = kernel.reshape(-1, kernel.shape[-1]).astype(self.dtype)
        return (matmul(tokens.astype(self.dtype), kernel, impl=self.kernels.matmul)
                + self.pose_patch_embedding["bias"][...].astype(self.dtype))

    def _check(self, x, y, pose_latents, face_pixel_values):
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != cfg.out_dim:
            raise InputError(f"x has shape {tuple(x.shape)}; expected [B, {cfg.out_dim}, F, H, W]")
        b, _, f, h, w = x.shape
        if y is None or tuple(y.shape) != (b, cfg.in_dim - cfg.out_dim, f, h, w):
            raise InputError(f"y has shape {None if y is None else tuple(y.shape)}; expected "
                             f"{(b, cfg.in_dim - cfg.out_dim, f, h, w)} (4 mask + 16 latent channels)")
        if f < 2:
            raise InputError(f"x has {f} latent frame(s); Animate needs the reference slot plus at least one frame")
        if pose_latents is None or tuple(pose_latents.shape) != (b, cfg.out_dim, f - 1, h, w):
            raise InputError(f"pose_latents has shape {None if pose_latents is None else tuple(pose_latents.shape)}"
                             f"; expected {(b, cfg.out_dim, f - 1, h, w)} (all latent frames but the first)")
        s = cfg.motion_encoder_size
        want = (b, 3, 4 * (f - 2) + 1, s, s)
        if face_pixel_values is None or tuple(face_pixel_values.shape) != want:
            raise InputError(f"face_pixel_values has shape "
                             f"{None if face_pixel_values is None else tuple(face_pixel_values.shape)}; expected "
                             f"{want} (4 (F - 2) + 1 face frames of {s}x{s} for {f} latent frames)")

    # -------------------------------------------------------------------------------- forward
    def prepare(self, x, t, context=None, *, clip_fea=None, y=None, pose_latents=None, face_pixel_values=None,
                context_kv=None, kv_mask=None):
        """Block inputs (`BlockInputs`, pose added to the tokens) and the face pieces (motion, face tokens)."""
        self._check(x, y, pose_latents, face_pixel_values)
        if context_kv is None:
            if context is None or clip_fea is None:
                raise InputError("pass context [B, Lc, text_dim] and clip_fea [B, 257, image_dim], or context_kv")
            context_kv = self.encode_context(context, clip_fea)
        inp = super().prepare(jnp.concatenate([x, y.astype(x.dtype)], axis=1), t, context_kv=context_kv,
                              kv_mask=kv_mask)
        pose = self.pose_tokens(pose_latents)
        pose = jnp.concatenate([jnp.zeros_like(pose[:, :inp.per_frame]), pose], axis=1)
        frames = inp.grid[0]
        pose = pad_frames(pose, frames=frames, padded=inp.tokens.shape[1] // frames)
        tokens = inp.tokens.astype(self.dtype) + pose.astype(self.dtype)  # the official sum is in the model dtype
        inp = inp._replace(tokens=shard(tokens.astype(jnp.float32), ("batch", "tokens", "embed")))
        motion = self.face_motion(face_pixel_values)
        motion_vec = self.motion_tokens(motion, x.shape[0])
        return inp, motion, motion_vec

    def run_blocks(self, inp: BlockInputs, h, motion_vec, *, remat: bool = False, return_intermediates: bool = False):
        """h [B, L, D] -> (h after every block and face block, per-block outputs [layers, B, L, D] or None)."""
        graphdef, state = nnx.split(self.blocks)
        face_graph, face_state = nnx.split(self.face_adapter.fuser_blocks)

        def face(carry, i):
            layer = jax.tree.map(lambda a: a[i // FACE_EVERY], face_state)
            return carry + nnx.merge(face_graph, layer)(carry, motion_vec)

        def body(carry, layer):
            i, layer_state, k, v, k_img, v_img = layer
            block = nnx.merge(graphdef, layer_state)
            out = block(carry, inp.e0, inp.cos, inp.sin, (k, v, k_img, v_img), inp.kv_mask, first=i == 0)
            out = jax.lax.cond(i % FACE_EVERY == 0, face, lambda c, _: c, out, i)
            out = shard(out, ("batch", "tokens", "embed"))
            return out, (out if return_intermediates else None)

        if remat:
            body = jax.checkpoint(body)
        layer_ids = jnp.arange(self.cfg.num_layers)
        return jax.lax.scan(body, h, (layer_ids, state, *inp.context_kv))

    def __call__(self, x, t, clip_fea=None, context=None, *, y=None, pose_latents=None, face_pixel_values=None,
                 context_kv=None, kv_mask=None, return_intermediates: bool = False, remat: bool = False):
        inp, motion, motion_vec = self.prepare(x, t, context, clip_fea=clip_fea, y=y, pose_latents=pose_latents,
                                               face_pixel_values=face_pixel_values, context_kv=context_kv,
                                               kv_mask=kv_mask)
        h, per_block = self.run_blocks(inp, inp.tokens, motion_vec, remat=remat,
                                       return_intermediates=return_intermediates)
        out = self.finish(inp, h)
        if not return_intermediates:
            return out
        return out, {"face_motion": motion, "motion_vec": motion_vec, "patch_embedding": inp.tokens,
                     "blocks": per_block}


# ------------------------------------------------------------------------------------------------ constructors
def abstract_animate(cfg: AnimateConfig, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """(graphdef, abstract state) of a WanAnimateModel without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: WanAnimateModel(cfg, dtype=dtype, param_dtype=param_dtype)))


def random_animate(cfg: AnimateConfig, seed: int = 0, *, dtype=jnp.float32) -> WanAnimateModel:
    """A WanAnimateModel with random weights drawn on the host (for tests): matrices N(0, 1/fan_in), norm
    weights 1 + 0.1 N, other vectors 0.1 N, the motion encoder's unscaled weights N(0, 1), blur filters as built."""
    graphdef, abstract = abstract_animate(cfg, dtype=dtype)
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, leaf in flat_state(abstract).items():
        shape, name = tuple(leaf.shape), path.rsplit(".", 1)[-1]
        x = rng.standard_normal(shape, dtype=np.float32)
        if path.endswith(("conv2.0.kernel", "skip.0.kernel")):  # the fixed blur filters
            taps = np.array([1, 3, 3, 1], np.float32)
            x = np.outer(taps, taps) / 64.0
        elif path.startswith("motion_encoder.") and name in ("kernel", "weight"):
            pass  # scaled by 1/sqrt(fan_in) at run time
        elif name == "kernel":
            conv = len(shape) == 5 or path.startswith("face_encoder.conv")  # fan-in over the taps too
            x *= np.float32(1.0 / math.sqrt(math.prod(shape[:-1]) if conv else shape[-2]))
        elif name == "weight":
            x = 1.0 + np.float32(0.1) * x
        else:
            x *= np.float32(0.1)
        arrays[path] = jnp.asarray(x.astype(leaf.dtype))
    return nnx.merge(graphdef, fill_state(abstract, arrays))
