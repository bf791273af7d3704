"""The Wan DiT denoiser (official `WanModel` in wan/modules/model.py), for model types t2v, i2v and ti2v.

Parameter paths mirror the official state dict (`blocks.self_attn.q.kernel` <- `blocks.{i}.self_attn.q.weight`),
except that the `num_layers` blocks are stored stacked on a leading `layers` axis and run with one `lax.scan`:
one compiled block instead of 40.

Precision follows the official bf16-autocast run when `dtype=bf16`: Linears and attention in bf16; LayerNorms,
modulation, gated residual adds, time MLPs and the head in fp32 (docs/architecture.md §4). With `dtype=fp32` everything is
fp32, which is what the parity cases check.

Timesteps may be one per sample [B], one per latent frame [B, F'] (what ti2v needs, and cheap), or one per token
[B, L] (the official layout). The modulation is computed per group of tokens sharing a timestep, never
materialised per token unless the caller asks for per-token timesteps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.layers import Linear, normal_init, ones_init, param, zeros_init
from wan22_jax.models.rope import apply_rope, rope_tables
from wan22_jax.models.time_embedding import sinusoidal_embedding
from wan22_jax.ops import XLA, Kernels, attention, matmul
from wan22_jax.sharding import frame_tokens, pad_frames, shard, token_multiple, unpad_frames
from wan22_jax.state import fill_state, flat_state

MODEL_TYPES = ("t2v", "i2v", "ti2v", "s2v")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """`WanModel` constructor arguments (the fields of the official config.json, plus the ignored-for-config
    ones that real releases leave at their defaults)."""

    model_type: str = "t2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 16
    dim: int = 2048
    ffn_dim: int = 8192
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 16
    num_layers: int = 32
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    def __post_init__(self):
        for name in ("text_len", "in_dim", "dim", "ffn_dim", "freq_dim", "text_dim", "out_dim", "num_heads",
                     "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"DiTConfig.{name} must be a positive integer, got {value!r}")
        if self.freq_dim % 2:
            raise ConfigError(f"DiTConfig.freq_dim must be even (cos and sin halves), got {self.freq_dim}")
        if not isinstance(self.eps, (int, float)) or isinstance(self.eps, bool) or not self.eps > 0:
            raise ConfigError(f"DiTConfig.eps must be a positive number, got {self.eps!r}")
        for name in ("qk_norm", "cross_attn_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"DiTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.patch_size, tuple) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in self.patch_size):
            raise ConfigError(f"patch_size must be 3 positive ints, got {self.patch_size!r}")
        if not isinstance(self.window_size, tuple):
            raise ConfigError(f"window_size must be a pair of ints, got {self.window_size!r}")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ConfigError(f"dim {self.dim} must split into num_heads {self.num_heads} heads of even size")
        if tuple(self.window_size) != (-1, -1):
            raise ConfigError(f"window_size {self.window_size}: only global attention (-1, -1) is implemented")
        if not self.qk_norm or not self.cross_attn_norm:
            raise ConfigError("qk_norm=False / cross_attn_norm=False are not used by any Wan2.2 model and are "
                              "not implemented")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


DIT_PRESETS: dict[str, DiTConfig] = {
    # Values of the official task configs (wan/configs/wan_*.py) and the release config.json files.
    "t2v-A14B": DiTConfig(model_type="t2v", in_dim=16, dim=5120, ffn_dim=13824, out_dim=16, num_heads=40,
                          num_layers=40),
    "i2v-A14B": DiTConfig(model_type="i2v", in_dim=36, dim=5120, ffn_dim=13824, out_dim=16, num_heads=40,
                          num_layers=40),
    "ti2v-5B": DiTConfig(model_type="ti2v", in_dim=48, dim=3072, ffn_dim=14336, out_dim=48, num_heads=24,
                         num_layers=30),
    # Tiny models of the same architecture, for tests (the reference cases use these dims).
    "tiny-t2v": DiTConfig(model_type="t2v", text_len=16, in_dim=16, dim=64, ffn_dim=128, freq_dim=32, text_dim=48,
                          out_dim=16, num_heads=4, num_layers=2),
    "tiny-i2v": DiTConfig(model_type="i2v", text_len=16, in_dim=36, dim=64, ffn_dim=128, freq_dim=32, text_dim=48,
                          out_dim=16, num_heads=4, num_layers=2),
    "tiny-ti2v": DiTConfig(model_type="ti2v", text_len=16, in_dim=48, dim=64, ffn_dim=128, freq_dim=32,
                           text_dim=48, out_dim=48, num_heads=4, num_layers=2),
}


# ------------------------------------------------------------------------------------------------ norms
class RMSNorm(nnx.Module):
    """Official WanRMSNorm: statistics in fp32, result cast back to the input dtype, then times the weight."""

    def __init__(self, dim: int, eps: float, *, param_dtype: Any, stack: int | None, rngs: nnx.Rngs | None):
        self.weight = param(rngs, ones_init, (dim,), ("heads",), param_dtype, stack)
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.weight[...]


class LayerNorm(nnx.Module):
    """Official WanLayerNorm: computed in fp32, cast back to the input dtype; affine only for norm3."""

    def __init__(self, dim: int, eps: float, *, affine: bool = False, param_dtype: Any = jnp.float32,
                 stack: int | None = None, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.weight = param(rngs, ones_init, (dim,), ("embed",), param_dtype, stack) if affine else None
        self.bias = param(rngs, zeros_init, (dim,), ("embed",), param_dtype, stack) if affine else None

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


# ------------------------------------------------------------------------------------------------ grouping
def _group(x, g: int):
    """[B, L, D] -> [B, G, L/G, D]: tokens sharing one timestep are consecutive (row-major f, h, w order)."""
    b, l, d = x.shape
    return x.reshape(b, g, l // g, d)


def _ungroup(x):
    b, g, n, d = x.shape
    return x.reshape(b, g * n, d)


# ------------------------------------------------------------------------------------------------ attention
class SelfAttention(nnx.Module):
    """q/k/v/o Linears with RMSNorm over the full width on q and k; RoPE on self-attention only."""

    def __init__(self, cfg: DiTConfig, *, dtype, param_dtype, stack, kernels, rngs):
        d = cfg.dim
        lin = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.q = Linear(d, d, axes=("embed", "heads"), **lin)
        self.k = Linear(d, d, axes=("embed", "heads"), **lin)
        self.v = Linear(d, d, axes=("embed", "heads"), **lin)
        self.o = Linear(d, d, axes=("heads", "embed"), **lin)
        self.norm_q = RMSNorm(d, cfg.eps, param_dtype=param_dtype, stack=stack, rngs=rngs)
        self.norm_k = RMSNorm(d, cfg.eps, param_dtype=param_dtype, stack=stack, rngs=rngs)
        self.num_heads = cfg.num_heads
        self.dtype = dtype
        self.kernels = kernels

    def _heads(self, x):
        b, l, _ = x.shape
        return x.reshape(b, l, self.num_heads, -1)

    def __call__(self, x, cos, sin, kv_mask):
        # x [B, L, D] -> [B, L, D]
        q = apply_rope(self._heads(self.norm_q(self.q(x))), cos, sin)
        k = apply_rope(self._heads(self.norm_k(self.k(x))), cos, sin)
        v = self._heads(self.v(x))
        # sequence parallel (Ulysses): queries keep the fsdp token split, keys/values gather all tokens, and
        # heads take the seq split; XLA turns the constraints into all-to-alls
        q = shard(q, ("batch", "attn_tokens", "attn_heads", None))
        k, v = (shard(a, ("batch", None, "attn_heads", None)) for a in (k, v))
        out = attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype), kv_mask=kv_mask,
                        impl=self.kernels.attention)
        out = shard(out, ("batch", "attn_tokens", "attn_heads", None))
        return self.o(out.astype(q.dtype).reshape(x.shape[0], x.shape[1], -1))


class CrossAttention(SelfAttention):
    """Video tokens attend to all text_len embedded text rows, unmasked (the zero-padded rows included).

    The zero rows that pad a prompt to text_len embed to identical keys and values, so `WanModel.encode_context`
    embeds one of them: K/V then have Lk = min(Lc + 1, text_len) rows, the last standing for text_len - Lk + 1
    equal rows. Attending to it once with logits + log(its count) is the same softmax (exact, not an
    approximation); with Lk == text_len the count is 1 and the bias 0.
    """

    def __init__(self, cfg: DiTConfig, *, dtype, param_dtype, stack, kernels, rngs):
        super().__init__(cfg, dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.text_len = cfg.text_len

    def kv(self, context):
        # context [B, Lc, D] -> k, v [B, Lc, N, d], computable once per generation
        return self._heads(self.norm_k(self.k(context))), self._heads(self.v(context))

    def __call__(self, x, kv):
        k, v = kv
        q = shard(self._heads(self.norm_q(self.q(x))), ("batch", "tokens", "heads", None))
        out = attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                        key_bias=padding_key_bias(k.shape[1], self.text_len),
                        impl=self.kernels.attention)
        return self.o(out.astype(q.dtype).reshape(x.shape[0], x.shape[1], -1))


def padding_key_bias(lk: int, text_len: int):
    """[Lk] fp32 logits bias for text K/V whose last row stands for text_len - Lk + 1 equal padding rows (see
    CrossAttention), or None when that count is 1."""
    if lk >= text_len:
        return None
    return jnp.zeros((lk,), jnp.float32).at[-1].set(math.log(text_len - lk + 1))


# ------------------------------------------------------------------------------------------------ block
class WanAttentionBlock(nnx.Module):
    """x += SA(LN(x)(1+s1)+b1)*g1;  x += CA(LN_affine(x), ctx);  x += FFN(LN(x)(1+s2)+b2)*g2."""

    def __init__(self, cfg: DiTConfig, *, dtype, param_dtype, stack, kernels, rngs):
        d = cfg.dim
        attn = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.norm1 = LayerNorm(d, cfg.eps)
        self.self_attn = SelfAttention(cfg, **attn)
        self.norm3 = LayerNorm(d, cfg.eps, affine=True, param_dtype=param_dtype, stack=stack, rngs=rngs)
        self.cross_attn = CrossAttention(cfg, **attn)
        self.norm2 = LayerNorm(d, cfg.eps)
        lin = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.ffn = nnx.Dict({"0": Linear(d, cfg.ffn_dim, axes=("embed", "mlp"), **lin),
                             "2": Linear(cfg.ffn_dim, d, axes=("mlp", "embed"), **lin)})
        self.modulation = param(rngs, normal_init(1.0 / math.sqrt(d)), (1, 6, d), (None, None, "embed"),
                                param_dtype, stack)
        self.dtype = dtype

    def __call__(self, x, e0, cos, sin, kv, kv_mask, first=False):
        # x [B, L, D] fp32 residual stream; e0 [B, G, 6, D] fp32 (G timestep groups)
        g = e0.shape[1]
        e = self.modulation[...].astype(jnp.float32)[None] + e0  # [B, G, 6, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = (e[:, :, i, None, :] for i in range(6))  # [B, G, 1, D]

        n1 = self.norm1(x)
        if self.dtype != jnp.float32:
            # Officially block 0 receives the bf16 patch embedding, so its norm1 output is rounded to bf16
            # (`type_as(x)`); later blocks see the fp32 residual stream.
            n1 = jnp.where(first, n1.astype(self.dtype).astype(n1.dtype), n1)
        h = _ungroup(_group(n1, g) * (1 + scale1) + shift1)
        y = self.self_attn(h, cos, sin, kv_mask)
        x = _ungroup(_group(x, g) + _group(y, g) * gate1)

        x = x + self.cross_attn(self.norm3(x), kv)

        h = _ungroup(_group(self.norm2(x), g).astype(jnp.float32) * (1 + scale2) + shift2)
        y = self.ffn["2"](jax.nn.gelu(shard(self.ffn["0"](h), ("batch", "tokens", "mlp")), approximate=True))
        return _ungroup(_group(x, g) + _group(y, g) * gate2)


class Head(nnx.Module):
    """LN -> (1+scale), +shift from [1,2,D] + e (time_embedding output, not e0) -> Linear, all in fp32."""

    def __init__(self, cfg: DiTConfig, *, param_dtype, kernels, rngs):
        d = cfg.dim
        self.norm = LayerNorm(d, cfg.eps)
        self.head = Linear(d, math.prod(cfg.patch_size) * cfg.out_dim, axes=("embed", None), dtype=jnp.float32,
                           param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.modulation = param(rngs, normal_init(1.0 / math.sqrt(d)), (1, 2, d), (None, None, "embed"),
                                param_dtype)

    def __call__(self, x, e):
        # x [B, L, D]; e [B, G, D] fp32
        g = e.shape[1]
        m = self.modulation[...].astype(jnp.float32)[None] + e[:, :, None, :]  # [B, G, 2, D]
        shift, scale = m[:, :, 0, None, :], m[:, :, 1, None, :]
        h = _ungroup(_group(self.norm(x).astype(jnp.float32), g) * (1 + scale) + shift)
        return self.head(h)


def _sequential(**layers):
    return nnx.Dict(layers)


# ------------------------------------------------------------------------------------------------ model
class BlockInputs(NamedTuple):
    """What `WanModel.prepare` hands to the blocks and the head."""
    tokens: jax.Array  # [B, L, D] fp32 patch embedding (padded per frame when sharded)
    e: jax.Array  # [B, G, D] time embedding (head modulation)
    e0: jax.Array  # [B, G, 6, D] time projection (block modulation)
    cos: jax.Array
    sin: jax.Array
    context_kv: tuple  # (k, v), each [layers, B, Lk, N, d], Lk = min(Lc + 1, text_len) (see CrossAttention)
    kv_mask: Any  # [B, L] bool or None
    grid: tuple  # (F', H', W') patches
    per_frame: int  # unpadded tokens per frame


class WanModel(nnx.Module):
    """The Wan2.2 DiT. Call with channels-first latents, like the official model.

    Args (of __call__):
      x: [B, in_dim - y_channels, F, H, W] noisy latent.
      t: [B] or [B, F/pt] (one per latent frame) or [B, L] (one per token) timesteps in [0, 1000].
      context: [B, Lc, text_dim] text embeddings, Lc <= text_len; zero-padded to text_len (official), which
        is computed as one padding row standing for all of them (exact; see CrossAttention).
      y: optional [B, C_y, F, H, W] conditioning concatenated on channels (i2v: mask + image latent).
      context_kv: precomputed `encode_context(context)` to reuse across denoising steps (then `context` is unused).
      kv_mask: optional [B, L] bool, False for padded tokens that self-attention must ignore.
      remat: rematerialise each block in the backward pass (jax.checkpoint on the scanned block): activation
        memory of one block instead of all, for one extra forward per block; True saves only each block's input,
        a `jax.checkpoint_policies` policy also saves what it names (e.g. the matmul outputs).
      return_intermediates: also return {"patch_embedding": [B, L, D], "blocks": [layers, B, L, D] (each block's
        output), "time_embedding": [B, G, D], "time_projection": [B, G, 6, D]}.
    Returns:
      [B, out_dim, F, H, W] fp32 velocity (and the intermediates dict).
    """

    def __init__(self, cfg: DiTConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        d = cfg.dim
        self.cfg = cfg
        self.dtype = dtype
        self.kernels = kernels  # the implementation of every matmul and attention (wan22_jax.ops.Kernels)
        pt, ph, pw = cfg.patch_size
        # Conv3d with stride == kernel: stored as a channels-last conv kernel, applied as a matmul on patches.
        self.patch_embedding = nnx.Dict({
            "kernel": param(rngs, normal_init(0.02), (pt, ph, pw, cfg.in_dim, d), (None, None, None, None, "embed"),
                            param_dtype),
            "bias": param(rngs, zeros_init, (d,), ("embed",), param_dtype)})
        lin = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        f32 = dict(dtype=jnp.float32, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.text_embedding = _sequential(**{"0": Linear(cfg.text_dim, d, axes=(None, "embed"), **lin),
                                             "2": Linear(d, d, axes=("embed", "embed_out"), **lin)})
        self.time_embedding = _sequential(**{"0": Linear(cfg.freq_dim, d, axes=(None, "embed"), **f32),
                                             "2": Linear(d, d, axes=("embed", "embed_out"), **f32)})
        self.time_projection = _sequential(**{"1": Linear(d, 6 * d, axes=("embed", "embed_out"), **f32)})
        self.blocks = WanAttentionBlock(cfg, dtype=dtype, param_dtype=param_dtype, stack=cfg.num_layers,
                                        kernels=kernels, rngs=rngs)
        self.head = Head(cfg, param_dtype=param_dtype, kernels=kernels, rngs=rngs)

    # -------------------------------------------------------------------------------- pieces
    def embed_time(self, t, grid):
        """t -> (e [B, G, D], e0 [B, G, 6, D]) in fp32, G = 1, F' or L groups of consecutive tokens."""
        f, h, w = grid
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 1:
            t = t[:, None]
        elif t.ndim != 2 or t.shape[1] not in (1, f, f * h * w):
            raise InputError(f"t has shape {t.shape}; expected [B], [B, {f}] (per latent frame) or "
                             f"[B, {f * h * w}] (per token)")
        e = sinusoidal_embedding(t, self.cfg.freq_dim)
        e = shard(self.time_embedding["2"](jax.nn.silu(self.time_embedding["0"](e))), ("batch", None, "embed"))
        e0 = shard(self.time_projection["1"](jax.nn.silu(e)), ("batch", None, "embed"))
        return e, e0.reshape(*e0.shape[:-1], 6, self.cfg.dim)

    def encode_context(self, context):
        """Text embedding and the per-layer cross-attention keys/values: k, v [layers, B, Lk, N, d].

        The official model zero-pads the context to text_len; those rows all embed alike, so one is embedded
        (Lk = min(Lc + 1, text_len)) and cross-attention counts it text_len - Lk + 1 times."""
        cfg = self.cfg
        b, lc, dt = context.shape
        if dt != cfg.text_dim or lc > cfg.text_len:
            raise InputError(f"context has shape {context.shape}; expected [B, <= {cfg.text_len}, {cfg.text_dim}]")
        context = jnp.pad(context, ((0, 0), (0, min(lc + 1, cfg.text_len) - lc), (0, 0)))
        c = self.text_embedding["2"](jax.nn.gelu(self.text_embedding["0"](context), approximate=True))
        graphdef, state = nnx.split(self.blocks)

        def one(layer_state):
            return nnx.merge(graphdef, layer_state).cross_attn.kv(c)

        return jax.lax.map(one, state)

    def patchify(self, x):
        """[B, C, F, H, W] -> tokens [B, L, D] (conv with stride == kernel as a matmul)."""
        pt, ph, pw = self.cfg.patch_size
        tokens = rearrange(x, "b c (f p) (h q) (w r) -> b (f h w) (p q r c)", p=pt, q=ph, r=pw)
        kernel = self.patch_embedding["kernel"][...]
        kernel = kernel.reshape(-1, kernel.shape[-1]).astype(self.dtype)
        return (matmul(tokens.astype(self.dtype), kernel, impl=self.kernels.matmul)
                + self.patch_embedding["bias"][...].astype(self.dtype))

    def unpatchify(self, out, grid):
        """Head features [B, L, (pt ph pw c)] (channel innermost, as official) -> [B, c, F, H, W]."""
        pt, ph, pw = self.cfg.patch_size
        f, h, w = grid
        return rearrange(out, "b (f h w) (p q r c) -> b c (f p) (h q) (w r)", f=f, h=h, w=w, p=pt, q=ph, r=pw)

    # -------------------------------------------------------------------------------- forward
    def __call__(self, x, t, context=None, *, y=None, context_kv=None, kv_mask=None,
                 return_intermediates: bool = False, remat: bool = False):
        inp = self.prepare(x, t, context, y=y, context_kv=context_kv, kv_mask=kv_mask)
        h, per_block = self.run_blocks(inp, inp.tokens, remat=remat,
                                       return_intermediates=return_intermediates)
        out = self.finish(inp, h)
        if not return_intermediates:
            return out
        # named intermediates, for analysis and for bisecting a parity failure layer by layer (token axis as
        # computed, i.e. including any per-frame padding added for sharding)
        return out, {"patch_embedding": inp.tokens, "blocks": per_block, "time_embedding": inp.e,
                     "time_projection": inp.e0}

    # The forward in three pieces, so that step caching (models/step_cache.py) can skip the blocks alone.
    def prepare(self, x, t, context=None, *, y=None, context_kv=None, kv_mask=None) -> "BlockInputs":
        """Everything the blocks read: patch tokens, time embeddings, RoPE tables, text K/V, key mask."""
        cfg = self.cfg
        if y is not None:
            x = jnp.concatenate([x, y.astype(x.dtype)], axis=1)
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise InputError(f"latent input has shape {x.shape} (after concatenating y); expected "
                             f"[B, {cfg.in_dim}, F, H, W]")
        pt, ph, pw = cfg.patch_size
        _, _, F, H, W = x.shape
        if F % pt or H % ph or W % pw:
            raise InputError(f"latent grid {(F, H, W)} is not divisible by patch_size {cfg.patch_size}")
        grid = (F // pt, H // ph, W // pw)

        h = self.patchify(x)
        e, e0 = self.embed_time(t, grid)
        if context_kv is None:
            if context is None:
                raise InputError("pass context [B, Lc, text_dim] or precomputed context_kv")
            context_kv = self.encode_context(context)
        cos, sin = rope_tables(grid, cfg.head_dim)
        # Tokens split over the mesh must divide evenly: pad every frame, mask the padded keys (sharding.py).
        per_frame = grid[1] * grid[2]
        padded = frame_tokens(grid[0], per_frame, token_multiple())
        if padded != per_frame:
            pad = functools.partial(pad_frames, frames=grid[0], padded=padded)
            mask = jnp.ones((h.shape[0], h.shape[1]), bool) if kv_mask is None else kv_mask
            h, cos, sin, kv_mask = pad(h), pad(cos, axis=0), pad(sin, axis=0), pad(mask)
            if e0.shape[1] > grid[0]:  # per-token timesteps
                e, e0 = pad(e), pad(e0)
        h = shard(h.astype(jnp.float32), ("batch", "tokens", "embed"))
        return BlockInputs(h, e, e0, cos, sin, tuple(context_kv), kv_mask, grid, per_frame)

    def run_blocks(self, inp: "BlockInputs", h, *, remat: bool = False,
                   return_intermediates: bool = False):
        """h [B, L, D] -> (h after every block, per-block outputs [layers, B, L, D] or None)."""
        graphdef, state = nnx.split(self.blocks)

        def body(carry, layer):
            i, layer_state, k, v = layer
            block = nnx.merge(graphdef, layer_state)
            out = shard(block(carry, inp.e0, inp.cos, inp.sin, (k, v), inp.kv_mask, first=i == 0),
                        ("batch", "tokens", "embed"))
            return out, (out if return_intermediates else None)

        if remat:  # training: keep only each block's input (or what a policy saves), recompute the rest backward
            body = jax.checkpoint(body, policy=None if remat is True else remat)
        layer_ids = jnp.arange(self.cfg.num_layers)
        return jax.lax.scan(body, h, (layer_ids, state, *inp.context_kv))

    def finish(self, inp: "BlockInputs", h):
        """Head and unpatchify: [B, L, D] -> [B, out_dim, F, H, W] fp32."""
        grid = inp.grid
        return self.unpatchify(unpad_frames(self.head(h, inp.e), grid[0], inp.per_frame), grid).astype(jnp.float32)

    def modulated_input(self, inp: "BlockInputs"):
        """Block 0's time-modulated self-attention input, LN(h)(1 + scale1) + shift1 [B, L, D]: the cheap signal
        step caching watches (how much the blocks' input changed since the last step)."""
        e = self.blocks.modulation[...][0].astype(jnp.float32)[None] + inp.e0  # [B, G, 6, D]
        g = e.shape[1]
        return _ungroup(_group(self.blocks.norm1(inp.tokens), g) * (1 + e[:, :, 1, None, :]) + e[:, :, 0, None, :])


# ------------------------------------------------------------------------------------------------ constructors
def abstract_dit(cfg: DiTConfig, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """(graphdef, abstract state) of a WanModel without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: WanModel(cfg, dtype=dtype, param_dtype=param_dtype)))


def random_dit(cfg: DiTConfig, seed: int = 0, *, dtype=jnp.float32, param_dtype=jnp.float32) -> WanModel:
    """A WanModel with random weights drawn on the host with numpy, leaf by leaf (the reference cases' scheme:
    kernels N(0, 1/fan_in), biases 0.1 N, norm weights 1 + 0.1 N, modulations 0.1 N). Building with `nnx.Rngs`
    instead compiles one random op per parameter shape, which dominates the cost of small models, and a
    full-size one would be drawn on the device. For tests, presets and benchmarks."""
    graphdef, abstract = abstract_dit(cfg, dtype=dtype, param_dtype=param_dtype)
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, leaf in flat_state(abstract).items():
        shape, name = tuple(leaf.shape), path.rsplit(".", 1)[-1]
        x = rng.standard_normal(shape, dtype=np.float32)
        if name == "kernel":
            fan_in = math.prod(shape[-5:-1]) if path == "patch_embedding.kernel" else shape[-2]
            x *= np.float32(1.0 / math.sqrt(fan_in))
        elif name == "weight":  # norms
            x = 1.0 + np.float32(0.1) * x
        else:  # biases, modulations
            x *= np.float32(0.1)
        arrays[path] = jnp.asarray(x.astype(leaf.dtype))
    return nnx.merge(graphdef, fill_state(abstract, arrays))
