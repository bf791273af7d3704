"""The ops layer: explicit, validated kernel choices carried in the graphdef; XLA by default with no custom call
anywhere in a model's program; fp32 products at full precision on every backend, bf16 ones at the default."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.errors import ConfigError
from wan22_jax.models.dit import DIT_PRESETS, WanModel
from wan22_jax.models.t5 import PRESETS as T5_PRESETS
from wan22_jax.models.t5 import T5Encoder
from wan22_jax.models.vae import build_vae
from wan22_jax.models.vae_config import preset
from wan22_jax.ops import (
    XLA,
    Kernels,
    attention,
    conv2d,
    conv3d,
    kernels_of,
    matmul,
    parse_cpu_kernels,
    with_kernels,
)
from wan22_jax.verify import relative_error as rel_err


def _precisions(text: str, op: str) -> set[str]:
    """The precision attributes of every `op` (dot_general / convolution) in a StableHLO module."""
    lines = [line for line in text.splitlines() if f"stablehlo.{op}" in line]
    assert lines, f"no {op} in the program"
    found = [re.findall(r"precision = \[(\w+), \w+\]|#stablehlo<precision (\w+)>", line) for line in lines]
    return {a or b for marks in found for a, b in (marks or [("DEFAULT", "")])}


def test_kernels_are_validated_and_named():
    assert XLA == Kernels() == Kernels("xla", "xla", "xla")
    assert Kernels.cpu() == Kernels("cpu", "cpu", "cpu")
    assert Kernels.cpu(("attention", "conv")) == Kernels(matmul="xla", attention="cpu", conv="cpu")
    with pytest.raises(ConfigError, match=r"Kernels.matmul='mkl'"):
        Kernels(matmul="mkl")
    with pytest.raises(ConfigError, match=r"Kernels.conv='onednn'"):
        Kernels(conv="onednn")
    with pytest.raises(ConfigError, match=r"unknown CPU kernel op\(s\) \['softmax'\]"):
        Kernels.cpu(("softmax",))
    assert parse_cpu_kernels(None) == XLA
    assert parse_cpu_kernels("all") == parse_cpu_kernels("") == Kernels.cpu()
    assert parse_cpu_kernels("attention, conv") == Kernels.cpu(("attention", "conv"))
    assert hash(Kernels.cpu()) != hash(XLA)  # usable as (part of) a jit cache key


def test_with_kernels_returns_a_retargeted_copy_sharing_the_weights():
    model = WanModel(DIT_PRESETS["tiny-t2v"], rngs=nnx.Rngs(0))
    cpu = with_kernels(model, Kernels.cpu())
    assert kernels_of(model) == {XLA} and kernels_of(cpu) == {Kernels.cpu()}
    assert nnx.graphdef(model) != nnx.graphdef(cpu)  # jit compiles a different program for it
    leaves, cpu_leaves = jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(cpu))
    assert len(leaves) == len(cpu_leaves) and all(a is b for a, b in zip(leaves, cpu_leaves, strict=True))
    with pytest.raises(ConfigError, match="must be a wan22_jax.ops.Kernels"):
        with_kernels(model, "cpu")


def test_fp32_products_run_at_highest_precision_bf16_at_default():
    a, w = jnp.ones((4, 8)), jnp.ones((8, 3))
    q = jnp.ones((1, 6, 2, 4))
    x, k = jnp.ones((1, 3, 4, 4, 2)), jnp.ones((3, 3, 3, 2, 2))
    for dtype, want in ((jnp.float32, {"HIGHEST"}), (jnp.bfloat16, {"DEFAULT"})):
        lower = lambda f, *args: jax.jit(f).lower(*(v.astype(dtype) for v in args)).as_text()  # noqa: E731
        assert _precisions(lower(matmul, a, w), "dot_general") == want
        assert _precisions(lower(lambda q: attention(q, q, q), q), "dot_general") == want
        assert _precisions(lower(lambda x, k: conv3d(x, k, dtype=dtype), x, k), "convolution") == want
        assert _precisions(lower(lambda x, k: conv3d(x, k, dtype=dtype, impl="dots"), x, k), "dot_general") == want


def test_blocked_attention_is_also_at_highest_precision():
    q = jnp.ones((1, 1200, 2, 8))  # > 1,024 queries: the query-blocked path
    text = jax.jit(lambda q: attention(q, q, q)).lower(q).as_text()
    assert "while" in text or "scan" in text or "map" in text.lower()
    assert _precisions(text, "dot_general") == {"HIGHEST"}


@pytest.mark.parametrize("build", ["dit", "t5", "vae"])
def test_default_models_lower_to_plain_xla(build):
    """With the default kernels no model program holds a custom call (the path accelerators run, on CPU too)."""
    if build == "dit":
        model = nnx.eval_shape(lambda: WanModel(DIT_PRESETS["tiny-t2v"], rngs=nnx.Rngs(0)))
        args = (jnp.ones((1, 16, 1, 4, 4)), jnp.array([500.0]), jnp.ones((1, 5, 48)))
        fn = lambda g, s, *a: nnx.merge(g, s)(*a)  # noqa: E731
    elif build == "t5":
        model = nnx.eval_shape(lambda: T5Encoder(dataclasses.replace(T5_PRESETS["tiny"]), dtype=jnp.float32,
                                                 param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
        args = (jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
        fn = lambda g, s, *a: nnx.merge(g, s)(*a)  # noqa: E731
    else:
        model = nnx.eval_shape(lambda: build_vae(preset("tiny2.2")))
        args = (jnp.ones((1, 2, 2, 2, 48)),)
        fn = lambda g, s, z: nnx.merge(g, s).decode_frames(z)  # noqa: E731
    graphdef, state = nnx.split(model)  # abstract parameters: lowering needs shapes only
    text = jax.jit(fn, static_argnums=0).lower(graphdef, state, *args).as_text()
    assert "custom_call" not in text
    assert _precisions(text, "dot_general") == {"HIGHEST"}  # fp32 models: every product at full precision


def test_cpu_choice_without_a_kernel_falls_back_to_the_same_numbers():
    """Kernels.cpu() on a product the kernel does not take (bf16) is XLA's product, bit for bit."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((32, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((16, 8)), jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(matmul(a, w, impl="cpu"), np.float32),
                                  np.asarray(matmul(a, w), np.float32))
    with pytest.raises(ValueError, match="unknown matmul implementation 'mkl'"):
        matmul(a, w, impl="mkl")


@pytest.mark.parametrize("impl", ["dots", "im2col"])
@pytest.mark.parametrize("stride", [1, 2])
def test_matmul_convolutions_equal_xla_with_their_gradients(stride, impl):
    # "dots" (per-tap matmuls, for TPU compile time) and "im2col" (one matmul, CPU training) against one XLA
    # convolution: batch 2, time stride (the VAE encoder's downsample3d), the zero-padded stride-2 2-D form
    # (downsample2d), and the backward pass
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 5, 3)), jnp.float32)
    for k in ((3, 3, 3, 3, 4), (3, 1, 1, 3, 4), (1, 1, 1, 3, 4)):
        kernel = jnp.asarray(rng.standard_normal(k), jnp.float32)
        loss = lambda x, k, impl: (conv3d(x, k, stride_t=stride, impl=impl) ** 2).sum()  # noqa: E731
        ref, got = (jax.value_and_grad(loss, argnums=(0, 1))(x, kernel, i) for i in ("xla", impl))
        assert rel_err(got[0], ref[0]) < 1e-6, k
        assert all(rel_err(g, r) < 1e-6 for g, r in zip(got[1], ref[1], strict=True)), k
    padding = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
    frames, kernel = x.reshape(-1, 6, 5, 3), jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    ref, got = (conv2d(frames, kernel, stride=stride, padding=padding, impl=i) for i in ("xla", impl))
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-6


def test_taps_convolution_equals_xla_on_large_frames():
    # "taps" (three 2-D convolutions) takes frames of at least TAPS_MIN_PIXELS; smaller ones are one XLA call
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((1, 4, 32, 32, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4, 4)), jnp.float32)
    ref, got = (conv3d(x, kernel, impl=i) for i in ("xla", "taps"))
    assert 0 < rel_err(got, ref) < 1e-6  # another summation order, the same sums
