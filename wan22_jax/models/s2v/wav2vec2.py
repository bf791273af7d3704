"""wav2vec 2.0 (the `Wav2Vec2ForCTC` of transformers, in the stable-layer-norm variant of wav2vec2-large-xlsr-53),
the audio encoder of S2V. Only what S2V reads: all hidden states, no CTC head, no masking.

* Feature encoder: 7 Conv1d (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2: 320 samples per frame, 50 frames/s)
  each followed by an affine LayerNorm (eps 1e-5) and exact GELU.
* Feature projection: LayerNorm + Linear to the hidden width.
* Positional embedding: a grouped Conv1d (kernel 128, 16 groups, padding 64, the last frame dropped for an even
  kernel) + GELU, added to the tokens. Its weight is weight-normed over the kernel taps: w = g * v / ||v|| with the
  norm over output and input channels for each tap; g and v are the parameters, w is formed at run time.
* 24 pre-norm Transformer layers (x += Attn(LN(x)); x += FFN(LN(x))), scanned, and a final LayerNorm.
* Hidden states (25): the embedding after the positional conv and each layer's output. Which version of the last
  one the official `AudioEncoder` sees depends on the transformers it runs with: up to 4.x (the official
  requirements pin <= 4.51.3) it is after the encoder's final LayerNorm, from 5.0 on (which records each layer's
  output) it is the last layer's raw output. `last_normed` chooses; the reference case `s2v_audio` was made with
  transformers 5.24 (raw).
Parameter paths are transformers' without the `wav2vec2.` prefix (`encoder.layers.attention.q_proj.kernel`,
stacked over layers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.dit import LayerNorm
from wan22_jax.models.layers import Linear, fan_in_init, normal_init, ones_init, param, zeros_init
from wan22_jax.ops import XLA, Kernels, attention, conv2d


@dataclasses.dataclass(frozen=True, kw_only=True)
class Wav2Vec2Config:
    """The architecture fields of a transformers `Wav2Vec2Config` (defaults: wav2vec2-large-xlsr-53)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    vocab_size: int = 33

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Wav2Vec2Config.{name} must be a positive integer, got {value!r}")
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)) or not self.conv_dim:
            raise ConfigError(f"Wav2Vec2Config conv_dim / conv_kernel / conv_stride must have the same length, got "
                              f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"Wav2Vec2Config.hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError(f"Wav2Vec2Config.hidden_size {self.hidden_size} is not divisible by "
                              f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}")
        if not self.conv_bias:
            raise ConfigError("Wav2Vec2Config.conv_bias=false is not implemented")


def conv1d(x, kernel, bias, *, stride: int = 1, padding=(0, 0), dtype, impl: str):
    """x [B, T, I], kernel [K, I, O] -> [B, T', O]: a 1-D convolution as a 2-D one over a height-1 image."""
    y = conv2d(x[:, None], kernel[None], stride=stride, padding=((0, 0), tuple(padding)), dtype=dtype, impl=impl)
    return y[:, 0] + bias.astype(dtype)


class _Conv(nnx.Module):
    def __init__(self, k: int, i: int, o: int, *, param_dtype, rngs):
        self.kernel = param(rngs, fan_in_init, (k, i, o), (None, None, "embed"), param_dtype)
        self.bias = param(rngs, zeros_init, (o,), ("embed",), param_dtype)


class ConvLayer(nnx.Module):
    """Conv1d -> LayerNorm over channels (affine, eps 1e-5) -> GELU (`Wav2Vec2LayerNormConvLayer`)."""

    def __init__(self, k: int, i: int, o: int, stride: int, *, param_dtype, rngs):
        self.conv = _Conv(k, i, o, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = LayerNorm(o, 1e-5, affine=True, param_dtype=param_dtype, rngs=rngs)
        self.stride = stride

    def __call__(self, x, dtype, impl):
        y = conv1d(x, self.conv.kernel[...], self.conv.bias[...], stride=self.stride, dtype=dtype, impl=impl)
        return jax.nn.gelu(self.layer_norm(y), approximate=False)


class PositionalConv(nnx.Module):
    """The weight-normed grouped positional convolution (`Wav2Vec2PositionalConvEmbedding`)."""

    def __init__(self, cfg: Wav2Vec2Config, *, param_dtype, rngs):
        k, g, d = cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups, cfg.hidden_size
        self.weight_g = param(rngs, ones_init, (k,), (None,), param_dtype)
        self.weight_v = param(rngs, normal_init(0.02), (k, d // g, d), (None, None, "embed"), param_dtype)
        self.bias = param(rngs, zeros_init, (d,), ("embed",), param_dtype)
        self.groups = g

    def __call__(self, x, dtype, impl):
        # x [B, T, D] -> [B, T, D]
        v = self.weight_v[...].astype(jnp.float32)  # [K, D/G, D]
        norm = jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))
        w = v * (self.weight_g[...].astype(jnp.float32)[:, None, None] / norm)
        k = w.shape[0]
        b, t, d = x.shape
        g = self.groups
        # one convolution per group, vmapped (XLA batches it into one grouped convolution)
        xg = x.reshape(b, t, g, d // g).transpose(2, 0, 1, 3)  # [G, B, T, D/G]
        wg = w.reshape(k, d // g, g, d // g).transpose(2, 0, 1, 3)  # [G, K, D/G, D/G]
        bg = self.bias[...].reshape(g, d // g)
        yg = jax.vmap(lambda a, kk, bb: conv1d(a, kk, bb, padding=(k // 2, k // 2), dtype=dtype, impl=impl))(
            xg, wg, bg)
        y = yg.transpose(1, 2, 0, 3).reshape(b, -1, d)
        if k % 2 == 0:  # Wav2Vec2SamePadLayer: an even kernel gives one frame too many
            y = y[:, :-1]
        return jax.nn.gelu(y, approximate=False)


class Attention(nnx.Module):
    def __init__(self, d: int, heads: int, *, lin):
        self.q_proj = Linear(d, d, axes=("embed", "heads"), **lin)
        self.k_proj = Linear(d, d, axes=("embed", "heads"), **lin)
        self.v_proj = Linear(d, d, axes=("embed", "heads"), **lin)
        self.out_proj = Linear(d, d, axes=("heads", "embed"), **lin)
        self.heads = heads

    def __call__(self, x, impl):
        b, t, d = x.shape
        q, k, v = (p(x).reshape(b, t, self.heads, -1) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = attention(q, k, v, impl=impl)
        return self.out_proj(out.reshape(b, t, d))


class FeedForward(nnx.Module):
    def __init__(self, d: int, ffn: int, *, lin):
        self.intermediate_dense = Linear(d, ffn, axes=("embed", "mlp"), **lin)
        self.output_dense = Linear(ffn, d, axes=("mlp", "embed"), **lin)

    def __call__(self, x):
        return self.output_dense(jax.nn.gelu(self.intermediate_dense(x), approximate=False))


class EncoderLayer(nnx.Module):
    """Pre-norm layer (`Wav2Vec2EncoderLayerStableLayerNorm`), built with a leading `layers` axis."""

    def __init__(self, cfg: Wav2Vec2Config, *, dtype, param_dtype, stack, kernels, rngs):
        d = cfg.hidden_size
        lin = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, kernels=kernels, rngs=rngs)
        norm = dict(affine=True, param_dtype=param_dtype, stack=stack, rngs=rngs)
        self.attention = Attention(d, cfg.num_attention_heads, lin=lin)
        self.layer_norm = LayerNorm(d, cfg.layer_norm_eps, **norm)
        self.feed_forward = FeedForward(d, cfg.intermediate_size, lin=lin)
        self.final_layer_norm = LayerNorm(d, cfg.layer_norm_eps, **norm)
        self.kernels = kernels

    def __call__(self, x):
        x = x + self.attention(self.layer_norm(x), self.kernels.attention).astype(x.dtype)
        return x + self.feed_forward(self.final_layer_norm(x)).astype(x.dtype)


class Wav2Vec2Model(nnx.Module):
    """Normalised waveform [B, N] -> all hidden states [num_hidden_layers + 1, B, T50, hidden] (fp32),
    T50 = the frames of the feature encoder (N / 320 for the release geometry)."""

    def __init__(self, cfg: Wav2Vec2Config, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        self.dtype = dtype
        self.kernels = kernels
        dims = (1, *cfg.conv_dim)
        self.feature_extractor = nnx.Dict({"conv_layers": nnx.Dict({
            str(i): ConvLayer(k, dims[i], dims[i + 1], s, param_dtype=param_dtype, rngs=rngs)
            for i, (k, s) in enumerate(zip(cfg.conv_kernel, cfg.conv_stride))})})
        self.feature_projection = nnx.Dict({
            "layer_norm": LayerNorm(cfg.conv_dim[-1], cfg.layer_norm_eps, affine=True, param_dtype=param_dtype,
                                    rngs=rngs),
            "projection": Linear(cfg.conv_dim[-1], cfg.hidden_size, axes=(None, "embed"), dtype=dtype,
                                 param_dtype=param_dtype, kernels=kernels, rngs=rngs)})
        self.encoder = nnx.Dict({
            "pos_conv_embed": nnx.Dict({"conv": PositionalConv(cfg, param_dtype=param_dtype, rngs=rngs)}),
            "layers": EncoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, stack=cfg.num_hidden_layers,
                                   kernels=kernels, rngs=rngs),
            "layer_norm": LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, affine=True, param_dtype=param_dtype,
                                    rngs=rngs)})

    def frames(self, n_samples: int) -> int:
        """Feature-encoder frames for a waveform of n_samples."""
        t = n_samples
        for k, s in zip(self.cfg.conv_kernel, self.cfg.conv_stride):
            t = (t - k) // s + 1
        return t

    def min_samples(self) -> int:
        """The shortest waveform giving one feature frame (400 samples for the release geometry)."""
        n = 1
        for k, s in reversed(list(zip(self.cfg.conv_kernel, self.cfg.conv_stride))):
            n = (n - 1) * s + k
        return n

    def __call__(self, input_values, *, last_normed: bool = True):
        """input_values [B, N] -> hidden states [layers + 1, B, T50, hidden]; last_normed: see the module doc."""
        if input_values.ndim != 2:
            raise InputError(f"input_values has shape {input_values.shape}; expected [B, samples]")
        if self.frames(input_values.shape[1]) < 1:
            raise InputError(f"the waveform has {input_values.shape[1]} samples; wav2vec2 needs at least "
                             f"{self.min_samples()} (one feature frame)")
        impl = self.kernels
        x = input_values.astype(jnp.float32)[..., None]  # [B, N, 1]
        for i in range(len(self.cfg.conv_dim)):
            x = self.feature_extractor["conv_layers"][str(i)](x, self.dtype, impl.conv)
        x = self.feature_projection["projection"](self.feature_projection["layer_norm"](x)).astype(jnp.float32)
        enc = self.encoder
        x = x + enc["pos_conv_embed"]["conv"](x, self.dtype, impl.conv).astype(jnp.float32)

        graphdef, state = nnx.split(enc["layers"])

        def body(h, layer_state):
            out = nnx.merge(graphdef, layer_state)(h)
            return out, out

        last, outs = jax.lax.scan(body, x, state)
        final = enc["layer_norm"](last) if last_normed else last
        return jnp.concatenate([x[None], outs[:-1], final[None]], axis=0)
