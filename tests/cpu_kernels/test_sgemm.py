"""The MKL sgemm custom call equals XLA's dot (2-D, batched, K^T read in place, odd splits, vmap, gradients),
is skipped where it must be, and a whole DiT forward through it equals the XLA-dot forward (the kernels checked
against the XLA path, the second parametrisation of the parity suite)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cpu_extra import require
from flax import nnx

from wan22_jax.cpu_kernels import sgemm as cpu_sgemm
from wan22_jax.models.dit import DIT_PRESETS, WanModel
from wan22_jax.ops import Kernels, attention, matmul, with_kernels
from wan22_jax.ops.attention import _dense
from wan22_jax.verify import relative_error as rel_err


@pytest.fixture(autouse=True)
def mkl():
    require(cpu_sgemm, "mkl")


def _x(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _ref(a, w, transpose_w=False):
    w = np.swapaxes(np.asarray(w, np.float64), -1, -2) if transpose_w else np.asarray(w, np.float64)
    return np.matmul(np.asarray(a, np.float64), w)


@pytest.mark.parametrize("a_shape,w_shape,transpose_w", [
    ((1601, 96), (96, 130), False),  # rows split over the threads unevenly
    ((4, 50, 96), (96, 64), False),  # a Linear on [B, L, D]: every leading axis is rows
    ((3, 200, 64), (3, 64, 72), False),  # odd batch: products and rows both split
    ((2, 6, 128, 32), (2, 6, 300, 32), True),  # attention logits, K^T read in place
])
def test_matches_float64_matmul(a_shape, w_shape, transpose_w):
    rng = np.random.default_rng(0)
    a, w = _x(rng, *a_shape), _x(rng, *w_shape)
    got = jax.jit(lambda a, w: cpu_sgemm.matmul(a, w, transpose_w=transpose_w))(a, w)
    assert "wan22_cpu_sgemm" in jax.jit(lambda a, w: cpu_sgemm.matmul(a, w, transpose_w=transpose_w)).lower(
        a, w).as_text()
    assert rel_err(got, _ref(a, w, transpose_w)) < 1e-6


def test_vmap_and_gradients_equal_xla():
    rng = np.random.default_rng(1)
    a, w = _x(rng, 3, 40, 24), _x(rng, 24, 20)
    vm = jax.vmap(lambda x: cpu_sgemm.matmul(x, w))(a)
    assert rel_err(vm, _ref(a, w)) < 1e-6

    def loss(a, w, fn):
        return jnp.sum(jnp.sin(fn(a, w)))

    got = jax.grad(loss, argnums=(0, 1))(a, w, cpu_sgemm.matmul)
    ref = jax.grad(loss, argnums=(0, 1))(a, w, jnp.matmul)
    for g, r in zip(got, ref, strict=True):
        assert rel_err(g, r) < 1e-5
    wt = _x(rng, 3, 30, 24)  # batched weight read transposed
    got = jax.grad(loss, argnums=(0, 1))(a, wt, lambda a, w: cpu_sgemm.matmul(a, w, transpose_w=True))
    ref = jax.grad(loss, argnums=(0, 1))(a, wt, lambda a, w: a @ jnp.swapaxes(w, -1, -2))
    for g, r in zip(got, ref, strict=True):
        assert rel_err(g, r) < 1e-5


def test_ops_matmul_takes_it_only_where_asked_and_where_it_applies():
    rng = np.random.default_rng(2)
    a, w = _x(rng, 64, 32), _x(rng, 32, 16)
    lowered = lambda impl, a, w: jax.jit(lambda a, w: matmul(a, w, impl=impl)).lower(a, w).as_text()  # noqa: E731
    assert "wan22_cpu_sgemm" in lowered("cpu", a, w)
    assert "wan22_cpu_sgemm" not in lowered("xla", a, w)  # the default never takes a kernel
    assert not cpu_sgemm.applies(a.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert "wan22_cpu_sgemm" not in lowered("cpu", a.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    # a time-embedding row stays on XLA's dot (MKL's small-M paths round differently)
    assert "wan22_cpu_sgemm" not in lowered("cpu", a[:cpu_sgemm.MIN_ROWS - 1], w)
    assert cpu_sgemm.status() == "mkl"


def test_dit_forward_equals_the_xla_forward():
    """1,280 tokens (blocked self-attention), a short prompt (the padding row), fp32: Kernels.cpu() vs XLA."""
    cfg = dataclasses.replace(DIT_PRESETS["tiny-t2v"], dim=64, num_heads=2, num_layers=2, text_len=32)
    model = WanModel(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    x, t, ctx = _x(rng, 1, 16, 4, 40, 32), jnp.array([700.0]), _x(rng, 1, 9, cfg.text_dim)
    fwd = jax.jit(lambda graphdef, s, x, t, c: nnx.merge(graphdef, s)(x, t, c), static_argnums=0)
    graphdef, state = nnx.split(model)
    cpu_graphdef = nnx.split(with_kernels(model, Kernels.cpu()))[0]
    text = fwd.lower(cpu_graphdef, state, x, t, ctx).as_text()
    assert "wan22_cpu_sgemm" in text and "wan22_cpu_attention" in text
    assert "wan22_cpu_" not in fwd.lower(graphdef, state, x, t, ctx).as_text()
    assert rel_err(fwd(cpu_graphdef, state, x, t, ctx), fwd(graphdef, state, x, t, ctx)) < 1e-6


def _softmax_attention64(q, k, v, bias, scale):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqnd,bknd->bnqk", q, k) * scale + np.asarray(bias, np.float64)[:, None, None, :]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bnqk,bknd->bqnd", p / p.sum(-1, keepdims=True), v)


def test_fused_attention_matches_float64_softmax():
    """Uneven query blocks (300 rows in blocks of 160), per-example bias, masked keys, and gradients."""
    rng = np.random.default_rng(4)
    q, k, v = _x(rng, 2, 300, 3, 32), _x(rng, 2, 70, 3, 32), _x(rng, 2, 70, 3, 32)
    bias = np.zeros((2, 70), np.float32)
    bias[0, -1] = np.log(5.0)  # a key that stands for 5 equal ones
    bias[1, 50:] = -np.inf  # masked keys
    got = jax.jit(lambda *a: cpu_sgemm.attention(*a, 0.2))(q, k, v, jnp.asarray(bias))
    ref = _softmax_attention64(q, k, v, np.where(np.isinf(bias), -1e30, bias), 0.2)
    assert rel_err(got, ref) < 2e-6
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))  # noqa: E731
    fused = jax.grad(loss(lambda q, k, v: cpu_sgemm.attention(q, k, v, jnp.asarray(bias), 0.2)), (0, 1, 2))
    plain = jax.grad(loss(lambda q, k, v: cpu_sgemm._attention_reference(q, k, v, jnp.asarray(bias), 0.2)),
                     (0, 1, 2))
    for g, r in zip(fused(q, k, v), plain(q, k, v), strict=True):
        assert rel_err(g, r) < 1e-5


@pytest.mark.parametrize("lq", [200, 1600])
def test_attention_entry_point_takes_the_fused_kernel(lq):
    rng = np.random.default_rng(5)
    q, k, v = _x(rng, 1, lq, 2, 64), _x(rng, 1, 90, 2, 64), _x(rng, 1, 90, 2, 64)
    mask = jnp.asarray(np.arange(90)[None] < 80)
    fn = jax.jit(lambda q, k, v: attention(q, k, v, kv_mask=mask, impl="cpu"))
    assert "wan22_cpu_attention" in fn.lower(q, k, v).as_text()
    xla = jax.jit(lambda q, k, v: attention(q, k, v, kv_mask=mask))
    assert "wan22_cpu_attention" not in xla.lower(q, k, v).as_text()
    ref = _dense(q, k, v, mask, None, 64 ** -0.5)
    assert rel_err(fn(q, k, v), ref) < 2e-6
