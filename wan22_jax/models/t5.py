"""The umT5-XXL text encoder (official `T5Encoder` in wan/modules/t5.py, encoder only; docs/architecture.md §5).

Per block (pre-norm): `x += attn(norm1(x))` with a per-layer relative position bias and no 1/sqrt(d) scaling,
then `x += ffn(norm2(x))` with a gated GELU(tanh) feed-forward; a final RMS norm closes the stack. Padded keys are
masked for every query; padded query rows are still computed (the caller trims them).

Parameter paths mirror the official state dict (`blocks.attn.q.kernel` <- `blocks.{i}.attn.q.weight`), except
that the `num_layers` blocks are stacked on a leading `layers` axis and run with one `lax.scan`, and the gate
Linear is `ffn.gate` (official `ffn.gate.0`, a Sequential(Linear, GELU)).

Precision: with `dtype=bf16` (the official run: bf16 weights, no autocast) Linears, residual stream and attention
probabilities are bf16 while the norm statistics and the softmax are fp32. One deliberate difference: the
official code adds the position bias to bf16 logits before its fp32 softmax; we form the logits in fp32, which is
never less accurate. With `dtype=fp32` everything is fp32 (what the parity cases check).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.layers import Linear, normal_init, ones_init, param
from wan22_jax.ops import XLA, Kernels, attention
from wan22_jax.state import fill_state, flat_state


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config:
    """Encoder hyper-parameters. Field names are those of the reference `t5_config.json` (`vocab_size` is the
    official constructor's `vocab`); the defaults are umt5-xxl, which is what a release without a config uses.

    max_distance and eps are fixed in the official code (128, 1e-6); transformers' config can set them.
    dropout is accepted for compatibility and ignored (inference only).
    """

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    shared_pos: bool = False
    eps: float = 1e-6
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers", "num_buckets",
                     "max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"T5Config.{name} must be a positive integer, got {value!r}")
        if self.dim_attn % self.num_heads:
            raise ConfigError(f"T5Config: dim_attn {self.dim_attn} is not divisible by num_heads {self.num_heads}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            # bidirectional bucketing halves the buckets, then halves again into exact and log ranges
            raise ConfigError(f"T5Config.num_buckets must be an even number >= 4, got {self.num_buckets}")
        if not isinstance(self.shared_pos, bool):
            raise ConfigError(f"T5Config.shared_pos must be true or false, got {self.shared_pos!r}")
        if self.shared_pos:
            raise ConfigError("T5Config.shared_pos=True (one position table for all layers) is not implemented; "
                              "umT5 (every Wan release) has a table per layer: shared_pos=False")
        for name in ("eps", "dropout"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                    or value < 0 or (name == "eps" and value == 0) or (name == "dropout" and value >= 1)):
                raise ConfigError(f"T5Config.{name} must be a number in {'(0, inf)' if name == 'eps' else '[0, 1)'}"
                                  f", got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads


PRESETS: dict[str, T5Config] = {
    "umt5-xxl": T5Config(),
    # the size of the reference cases
    "tiny": T5Config(vocab_size=256, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2),
    # dim_attn != dim and an odd layer count, to catch transposed kernels and layer-order mistakes
    "tiny-wide-attn": T5Config(vocab_size=300, dim=24, dim_attn=48, dim_ffn=40, num_heads=6, num_layers=3),
}


def t5_config(name: str) -> T5Config:
    """A named preset (see PRESETS)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown T5 preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def t5_config_from_dict(raw: dict[str, Any], *, source: str) -> T5Config:
    """Parses an official-layout `t5_config.json` strictly (unknown fields refused)."""
    return config_from_dict(T5Config, raw, source=source)


# ----------------------------------------------------------------------------------------------- positions
def relative_position_buckets(lq: int, lk: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket of `k_pos - q_pos` for every (query, key) pair. Returns [lq, lk] int32.

    Half of the buckets are for keys after the query. Within a half, distances below half its size get their
    own bucket, larger ones share log-spaced buckets up to `max_distance`. Computed on the host in float32, the
    precision the official code uses, so bucket edges agree with it exactly.
    """
    rel = np.arange(lk, dtype=np.int64)[None, :] - np.arange(lq, dtype=np.int64)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    n = np.abs(rel)
    max_exact = half // 2
    # n = 0 takes the exact branch below; max(n, 1) only keeps log() finite for it
    log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)) / np.float32(
        math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int64, copy=False)
    large = np.minimum(large, half - 1)
    buckets += np.where(n < max_exact, n, large)
    return buckets.astype(np.int32)


# ----------------------------------------------------------------------------------------------- layers
class Embedding(nnx.Module):
    """Table lookup: `weight` [num, features]; output in the compute dtype."""

    def __init__(self, num: int, features: int, *, axes: tuple[str | None, str | None], dtype: Any,
                 param_dtype: Any, stack: int | None = None, rngs: nnx.Rngs | None = None):
        self.weight = param(rngs, normal_init(1.0), (num, features), axes, param_dtype, stack)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        # ids are validated on the host (validate_inputs): inside jit an out-of-range id cannot raise
        return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)


class T5LayerNorm(nnx.Module):
    """RMS norm without mean subtraction or bias: `weight * x / sqrt(mean(x^2) + eps)`, statistics in fp32.

    The normalised activations are rounded to the compute dtype before the gain, as the official code does with
    bf16 weights (and a no-op in fp32).
    """

    def __init__(self, dim: int, *, eps: float, dtype: Any, param_dtype: Any, stack: int | None = None,
                 rngs: nnx.Rngs | None = None):
        self.weight = param(rngs, ones_init, (dim,), ("embed",), param_dtype, stack)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * y.astype(self.dtype)


class RelativeEmbedding(nnx.Module):
    """One layer's position-bias table `embedding.weight` [num_buckets, num_heads]."""

    def __init__(self, num_buckets: int, num_heads: int, *, dtype: Any, param_dtype: Any,
                 stack: int | None = None, rngs: nnx.Rngs | None = None):
        self.embedding = Embedding(num_buckets, num_heads, axes=(None, "heads"), dtype=dtype,
                                   param_dtype=param_dtype, stack=stack, rngs=rngs)

    def __call__(self, buckets: jax.Array) -> jax.Array:
        """buckets [Lq, Lk] int -> additive logits bias [1, N, Lq, Lk]."""
        return jnp.transpose(self.embedding(buckets), (2, 0, 1))[None]


class T5Attention(nnx.Module):
    """Multi-head self-attention without biases and without logits scaling."""

    def __init__(self, cfg: T5Config, *, dtype: Any, param_dtype: Any, kernels: Kernels, stack: int | None,
                 rngs: nnx.Rngs | None):
        lin = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.q = Linear(cfg.dim, cfg.dim_attn, axes=("embed", "heads"), **lin)
        self.k = Linear(cfg.dim, cfg.dim_attn, axes=("embed", "heads"), **lin)
        self.v = Linear(cfg.dim, cfg.dim_attn, axes=("embed", "heads"), **lin)
        self.o = Linear(cfg.dim_attn, cfg.dim, axes=("heads", "embed"), **lin)
        self.num_heads = cfg.num_heads
        self.kernels = kernels

    def __call__(self, x: jax.Array, kv_mask: jax.Array, bias: jax.Array) -> jax.Array:
        """x [B, L, dim], kv_mask [B, L] bool, bias [1, N, L, L] -> [B, L, dim]."""
        b, l, _ = x.shape
        heads = lambda y: y.reshape(b, l, self.num_heads, -1)  # noqa: E731
        out = attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), kv_mask=kv_mask, bias=bias,
                        scale=1.0, impl=self.kernels.attention)
        return self.o(out.reshape(b, l, -1))


class T5FeedForward(nnx.Module):
    """`fc2(fc1(x) * gelu_tanh(gate(x)))`."""

    def __init__(self, cfg: T5Config, *, dtype: Any, param_dtype: Any, stack: int | None, kernels: Kernels,
                 rngs: nnx.Rngs | None):
        lin = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        self.gate = Linear(cfg.dim, cfg.dim_ffn, axes=("embed", "mlp"), **lin)
        self.fc1 = Linear(cfg.dim, cfg.dim_ffn, axes=("embed", "mlp"), **lin)
        self.fc2 = Linear(cfg.dim_ffn, cfg.dim, axes=("mlp", "embed"), **lin)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.fc1(x) * jax.nn.gelu(self.gate(x), approximate=True))


class T5Block(nnx.Module):
    """One encoder layer (official `T5SelfAttention`), with its own relative position table."""

    def __init__(self, cfg: T5Config, *, dtype: Any, param_dtype: Any, kernels: Kernels, stack: int | None = None,
                 rngs: nnx.Rngs | None = None):
        norm = dict(eps=cfg.eps, dtype=dtype, param_dtype=param_dtype, stack=stack, rngs=rngs)
        self.norm1 = T5LayerNorm(cfg.dim, **norm)
        self.attn = T5Attention(cfg, dtype=dtype, param_dtype=param_dtype, kernels=kernels, stack=stack,
                                rngs=rngs)
        self.norm2 = T5LayerNorm(cfg.dim, **norm)
        self.ffn = T5FeedForward(cfg, dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels,
                                 rngs=rngs)
        self.pos_embedding = RelativeEmbedding(cfg.num_buckets, cfg.num_heads, dtype=dtype,
                                               param_dtype=param_dtype, stack=stack, rngs=rngs)

    def __call__(self, x: jax.Array, kv_mask: jax.Array, buckets: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), kv_mask, self.pos_embedding(buckets))
        return x + self.ffn(self.norm2(x))


class T5Encoder(nnx.Module):
    """The encoder stack.

    Args:
      cfg: hyper-parameters.
      dtype: compute dtype (bf16 as the official run, fp32 for parity).
      param_dtype: storage dtype of the parameters.
      kernels: the implementation of every matmul and attention (`wan22_jax.ops.Kernels`; XLA by default).
      rngs: parameter init; random weights N(0, 1/fan_in) (tables N(0, 1)), only meant for tests and benchmarks.
    """

    def __init__(self, cfg: T5Config, *, dtype: Any = jnp.bfloat16, param_dtype: Any = jnp.bfloat16,
                 kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        for name, dt in (("dtype", dtype), ("param_dtype", param_dtype)):
            if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
                # float16 would also need the official inf clamp after every residual add
                raise ConfigError(f"T5Encoder {name} must be float32 or bfloat16, got {dt}")
        if not isinstance(kernels, Kernels):
            raise ConfigError(f"T5Encoder kernels must be a wan22_jax.ops.Kernels, got {kernels!r}")
        self.cfg = cfg
        self.token_embedding = Embedding(cfg.vocab_size, cfg.dim, axes=("vocab", "embed"), dtype=dtype,
                                         param_dtype=param_dtype, rngs=rngs)
        self.blocks = T5Block(cfg, dtype=dtype, param_dtype=param_dtype, kernels=kernels,
                              stack=cfg.num_layers, rngs=rngs)
        self.norm = T5LayerNorm(cfg.dim, eps=cfg.eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array, *, collect_hidden: bool = False):
        """Encodes token ids.

        Args:
          ids: [B, L] int token ids (validate them with `validate_inputs` first).
          mask: [B, L] int or bool, nonzero = valid token. Padded keys are ignored by every query.
          collect_hidden: also return every block's output, for layer-by-layer bisection.
        Returns:
          hidden [B, L, dim] in the compute dtype, for ALL positions (padded rows included);
          with collect_hidden, (hidden, per_block [num_layers, B, L, dim]) (before the final norm).
        """
        length = ids.shape[1]
        kv_mask = mask > 0
        buckets = jnp.asarray(relative_position_buckets(length, length, self.cfg.num_buckets,
                                                        self.cfg.max_distance))
        x = self.token_embedding(ids)  # [B, L, dim]
        graphdef, state = nnx.split(self.blocks)

        def body(h, layer_state):
            h = nnx.merge(graphdef, layer_state)(h, kv_mask, buckets)
            return h, (h if collect_hidden else None)

        x, per_block = jax.lax.scan(body, x, state)
        x = self.norm(x)
        return (x, per_block) if collect_hidden else x


def validate_inputs(ids, mask, cfg: T5Config) -> tuple[np.ndarray, np.ndarray]:
    """Host-side checks of encoder inputs (inside jit a bad id would silently read garbage).

    Returns (ids int32 [B, L], mask int32 [B, L]); raises InputError naming the problem.
    """
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.ndim != 2:
        raise InputError(f"ids must be [B, L], got shape {ids.shape}")
    if mask.shape != ids.shape:
        raise InputError(f"mask shape {mask.shape} must equal ids shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"ids must be integers, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        raise InputError(f"token ids must lie in [0, {cfg.vocab_size}), got min {ids.min()} max {ids.max()}")
    return ids.astype(np.int32), (mask > 0).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def t5_forward(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """The jit boundary: plain pytrees in, `hidden` [B, L, dim] out (see `T5Encoder.__call__`)."""
    return nnx.merge(graphdef, state)(ids, mask)


def abstract_t5(cfg: T5Config, *, dtype: Any = jnp.bfloat16, param_dtype: Any = jnp.bfloat16,
                kernels: Kernels = XLA) -> tuple[nnx.GraphDef, nnx.State]:
    """The module's graphdef and abstract (ShapeDtypeStruct) state; allocates nothing."""
    return nnx.split(nnx.eval_shape(lambda: T5Encoder(cfg, dtype=dtype, param_dtype=param_dtype,
                                                      kernels=kernels, rngs=nnx.Rngs(0))))


def random_t5(cfg: T5Config, *, dtype: Any = jnp.bfloat16, param_dtype: Any = jnp.bfloat16,
              kernels: Kernels = XLA, seed: int = 0) -> T5Encoder:
    """A randomly initialised encoder for tests and benchmarks, drawn leaf by leaf with numpy.

    Kernels N(0, 1/fan_in), embedding and position tables N(0, 1), norm gains 1 + 0.1 N (the reference cases'
    scheme). Host drawing keeps the peak memory near one fp32 copy of the largest leaf, where jax's threefry
    over the 1e9-entry umt5-xxl embedding needs ~19 GB on a CPU.
    """
    graphdef, abstract = abstract_t5(cfg, dtype=dtype, param_dtype=param_dtype, kernels=kernels)
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, leaf in flat_state(abstract).items():
        x = rng.standard_normal(leaf.shape, dtype=np.float32)
        if path.endswith(".kernel"):
            x *= np.float32(1.0 / math.sqrt(leaf.shape[-2]))
        elif "norm" in path.split(".")[-2]:
            x = 1.0 + np.float32(0.1) * x
        arrays[path] = jax.device_put(x.astype(leaf.dtype))
        del x
    return nnx.merge(graphdef, fill_state(abstract, arrays))


__all__ = ["T5Config", "PRESETS", "t5_config", "t5_config_from_dict", "relative_position_buckets", "T5Encoder",
           "validate_inputs", "t5_forward", "abstract_t5", "random_t5"]
