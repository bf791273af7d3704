"""The CLIP image encoder of Animate-14B (official `CLIPModel.visual` in wan/modules/animate/clip.py).

The release file holds the whole open-clip XLM-RoBERTa ViT-H/14 (`visual.*`, `textual.*`, `log_scale`); WanAnimate
uses only the image tower, and only up to its second-to-last block (`use_31_block=True`): the output is the
[B, 257, 1280] token sequence of block 30 of 32, with no post-norm and no head. This module therefore holds just
what runs: the patch embedding, class and position embeddings, the pre-norm and vision_layers - 1 blocks.

Preprocessing is part of the call, as officially: each image in [-1, 1] is resized to 224 x 224 with torch's
bicubic interpolation (a = -0.75, half-pixel centres, border clamped, no antialiasing, so downscaling aliases
exactly as the official code does), mapped to [0, 1] and normalised with the CLIP mean and std.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.dit import LayerNorm
from wan22_jax.models.layers import Linear, normal_init, param
from wan22_jax.ops import XLA, Kernels, attention, matmul

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPVisionConfig:
    """The image tower's sizes (official `clip_xlm_roberta_vit_h_14` values by default).

    vision_layers counts the blocks of the released tower; the encoder runs (and holds) the first
    vision_layers - 1 of them.
    """

    image_size: int = 224
    patch_size: int = 14
    vision_dim: int = 1280
    vision_mlp_ratio: int = 4
    vision_heads: int = 16
    vision_layers: int = 32
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("image_size", "patch_size", "vision_dim", "vision_mlp_ratio", "vision_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"CLIPVisionConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.vision_layers, int) or self.vision_layers < 2:
            raise ConfigError(f"CLIPVisionConfig.vision_layers must be >= 2 (all blocks but the last run), got "
                              f"{self.vision_layers!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"CLIPVisionConfig.image_size {self.image_size} is not a multiple of patch_size "
                              f"{self.patch_size}")
        if self.vision_dim % self.vision_heads:
            raise ConfigError(f"CLIPVisionConfig.vision_dim {self.vision_dim} does not split into "
                              f"{self.vision_heads} heads")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def num_blocks(self) -> int:
        return self.vision_layers - 1


# ------------------------------------------------------------------------------------------------ resize
def _cubic_near(x, a):
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_far(x, a):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


@functools.lru_cache(maxsize=32)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float32 weights of torch's `F.interpolate(mode="bicubic", align_corners=False)` along one axis
    (no antialiasing): output i samples the input at (i + 0.5) * n_in / n_out - 0.5 with Keys' cubic (a = -0.75)
    on 4 taps, indices clamped to the border. The source position and the weights are computed in float32 as torch
    does: its rounding of the position (~1e-6 at 64 -> 224) shows in the weights, and the parity tolerance sees it."""
    f32 = np.float32
    a = f32(-0.75)
    scale = f32(n_in) / f32(n_out)
    src = scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
    base = np.floor(src)
    t = (src - base).astype(f32)
    one = f32(1.0)
    weights = [_cubic_far(t + one, a), _cubic_near(t, a), _cubic_near(one - t, a), _cubic_far(f32(2.0) - t, a)]
    mat = np.zeros((n_out, n_in), f32)
    for tap, w in zip(range(-1, 3), weights, strict=True):
        idx = np.clip(base.astype(np.int64) + tap, 0, n_in - 1)
        np.add.at(mat, (np.arange(n_out), idx), w.astype(f32))
    return mat


def resize_bicubic(images, size: int):
    """[B, C, H, W] -> [B, C, size, size] with torch's bicubic interpolation (two separable matmuls)."""
    _, _, h, w = images.shape
    rows = jnp.asarray(bicubic_matrix(h, size))
    cols = jnp.asarray(bicubic_matrix(w, size))
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bchw->bcow", rows, images.astype(jnp.float32), precision=hi)
    return jnp.einsum("pw,bcow->bcop", cols, x, precision=hi)


# ------------------------------------------------------------------------------------------------ blocks
class VisionSelfAttention(nnx.Module):
    """One fused q/k/v Linear (output ordered (3, heads, head_dim)), attention, output projection."""

    def __init__(self, cfg: CLIPVisionConfig, *, dtype, param_dtype, stack, kernels, rngs):
        d = cfg.vision_dim
        lin = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.to_qkv = Linear(d, 3 * d, axes=("embed", "heads"), **lin)
        self.proj = Linear(d, d, axes=("heads", "embed"), **lin)
        self.num_heads = cfg.vision_heads
        self.dtype = dtype
        self.kernels = kernels

    def __call__(self, x):
        b, s, d = x.shape
        q, k, v = (self.to_qkv(x).reshape(b, s, 3, self.num_heads, d // self.num_heads)[:, :, i]
                   for i in range(3))
        out = attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                        impl=self.kernels.attention)
        return self.proj(out.reshape(b, s, d))


class VisionBlock(nnx.Module):
    """Pre-norm transformer block: x + attn(LN(x)), x + fc2(GELU_erf(fc1(LN(x)))); LNs computed in fp32."""

    def __init__(self, cfg: CLIPVisionConfig, *, dtype, param_dtype, stack, kernels, rngs):
        d, hidden = cfg.vision_dim, cfg.vision_dim * cfg.vision_mlp_ratio
        norm = dict(affine=True, param_dtype=param_dtype, stack=stack, rngs=rngs)
        lin = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.norm1 = LayerNorm(d, cfg.norm_eps, **norm)
        self.attn = VisionSelfAttention(cfg, dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels,
                                        rngs=rngs)
        self.norm2 = LayerNorm(d, cfg.norm_eps, **norm)
        self.mlp = nnx.Dict({"0": Linear(d, hidden, axes=("embed", "mlp"), **lin),
                             "2": Linear(hidden, d, axes=("mlp", "embed"), **lin)})

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp["2"](jax.nn.gelu(self.mlp["0"](self.norm2(x)), approximate=False))


class CLIPVisionEncoder(nnx.Module):
    """What `CLIPModel.visual` runs. Parameter paths are the official `visual.*` names without the prefix.

    Args (of __call__):
      images: [B, 3, H, W] RGB in [-1, 1], any H and W (resized to image_size x image_size).
    Returns:
      [B, 1 + (image_size / patch_size)^2, vision_dim] tokens after vision_layers - 1 blocks (fp32).
    """

    def __init__(self, cfg: CLIPVisionConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        d, p = cfg.vision_dim, cfg.patch_size
        self.cfg = cfg
        self.dtype = dtype
        self.kernels = kernels
        gain = 1.0 / math.sqrt(d)
        # Conv2d with stride == kernel and no bias, stored channels-last [p, p, 3, D], applied as a matmul.
        self.patch_embedding = nnx.Dict({"kernel": param(rngs, normal_init(gain), (p, p, 3, d),
                                                         (None, None, None, "embed"), param_dtype)})
        self.cls_embedding = param(rngs, normal_init(gain), (d,), ("embed",), param_dtype)
        self.pos_embedding = param(rngs, normal_init(gain), (cfg.num_tokens, d), (None, "embed"), param_dtype)
        self.pre_norm = LayerNorm(d, cfg.norm_eps, affine=True, param_dtype=param_dtype, rngs=rngs)
        self.transformer = VisionBlock(cfg, dtype=dtype, param_dtype=param_dtype, stack=cfg.num_blocks,
                                       kernels=kernels, rngs=rngs)

    def preprocess(self, images):
        """[B, 3, H, W] in [-1, 1] -> normalised [B, 3, S, S] (S = image_size), as `CLIPModel.visual`."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"CLIP images have shape {tuple(images.shape)}; expected [B, 3, H, W] RGB in [-1, 1]")
        x = resize_bicubic(images, self.cfg.image_size) * 0.5 + 0.5
        mean = jnp.asarray(CLIP_MEAN, jnp.float32)[None, :, None, None]
        std = jnp.asarray(CLIP_STD, jnp.float32)[None, :, None, None]
        return (x - mean) / std

    def __call__(self, images):
        x = self.preprocess(images)
        p = self.cfg.patch_size
        tokens = rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
        kernel = self.patch_embedding["kernel"][...]
        kernel = kernel.reshape(-1, kernel.shape[-1]).astype(self.dtype)
        h = matmul(tokens.astype(self.dtype), kernel, impl=self.kernels.matmul).astype(jnp.float32)
        b = h.shape[0]
        cls = jnp.broadcast_to(self.cls_embedding[...].astype(jnp.float32), (b, 1, h.shape[-1]))
        h = jnp.concatenate([cls, h], axis=1) + self.pos_embedding[...].astype(jnp.float32)[None]
        h = self.pre_norm(h)
        graphdef, state = nnx.split(self.transformer)

        def body(carry, layer_state):
            return nnx.merge(graphdef, layer_state)(carry).astype(jnp.float32), None

        h, _ = jax.lax.scan(body, h, state)
        return h


def abstract_clip(cfg: CLIPVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """(graphdef, abstract state) of a CLIPVisionEncoder without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: CLIPVisionEncoder(cfg, dtype=dtype, param_dtype=param_dtype)))
