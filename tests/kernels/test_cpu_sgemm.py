"""The MKL sgemm custom call equals XLA's dot (2-D, batched, K^T read in place, odd splits, vmap, gradients),
is skipped where it must be, and a whole DiT forward through it equals the XLA-dot forward."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.kernels import cpu_sgemm
from wan22_jax.models.dit import DIT_PRESETS, WanModel

if os.environ.get("CI") and os.environ.get(cpu_sgemm.ENV, "auto") != "xla":
    # CI installs the cpu extra: the kernel must load there, so that these tests cannot pass by skipping
    assert cpu_sgemm.available(), cpu_sgemm.status()
pytestmark = pytest.mark.skipif(not cpu_sgemm.available(), reason=f"MKL kernel: {cpu_sgemm.status()}")


@pytest.fixture
def mkl_linears():
    """The Linears' sgemm on MKL whatever the CPU (under 'auto' only Intel CPUs take it)."""
    with cpu_sgemm.mode("mkl"):
        yield


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


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
def test_matches_float64_matmul(mkl_linears, a_shape, w_shape, transpose_w):
    rng = np.random.default_rng(0)
    a, w = _x(rng, *a_shape), _x(rng, *w_shape)
    assert cpu_sgemm.use_for(a, w)
    got = jax.jit(lambda a, w: cpu_sgemm.matmul(a, w, transpose_w=transpose_w))(a, w)
    assert "wan22_cpu_sgemm" in jax.jit(lambda a, w: cpu_sgemm.matmul(a, w, transpose_w=transpose_w)).lower(
        a, w).as_text()
    assert rel_err(got, _ref(a, w, transpose_w)) < 1e-6


def test_vmap_and_gradients_equal_xla(mkl_linears):
    rng = np.random.default_rng(1)
    a, w = _x(rng, 3, 40, 24), _x(rng, 24, 20)
    vm = jax.vmap(lambda x: cpu_sgemm.matmul(x, w))(a)
    assert rel_err(vm, _ref(a, w)) < 1e-6

    def loss(a, w, fn):
        return jnp.sum(jnp.sin(fn(a, w)))

    got = jax.grad(loss, argnums=(0, 1))(a, w, cpu_sgemm.matmul)
    ref = jax.grad(loss, argnums=(0, 1))(a, w, jnp.matmul)
    for g, r in zip(got, ref):
        assert rel_err(g, r) < 1e-5
    wt = _x(rng, 3, 30, 24)  # batched weight read transposed
    got = jax.grad(loss, argnums=(0, 1))(a, wt, lambda a, w: cpu_sgemm.matmul(a, w, transpose_w=True))
    ref = jax.grad(loss, argnums=(0, 1))(a, wt, lambda a, w: a @ jnp.swapaxes(w, -1, -2))
    for g, r in zip(got, ref):
        assert rel_err(g, r) < 1e-5


def test_not_used_where_it_must_not_be(mkl_linears):
    rng = np.random.default_rng(2)
    a, w = _x(rng, 64, 32), _x(rng, 32, 16)
    assert cpu_sgemm.use_for(a, w)
    assert not cpu_sgemm.use_for(a.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert not cpu_sgemm.use_for(a[:cpu_sgemm.MIN_ROWS - 1], w)  # a time-embedding row: XLA's dot
    with cpu_sgemm.disabled():
        assert not cpu_sgemm.use_for(a, w)
        assert "wan22_cpu_sgemm" not in jax.jit(cpu_sgemm.matmul).lower(a, w).as_text()
    assert cpu_sgemm.status() == "mkl"


def test_auto_puts_linears_on_mkl_only_on_intel():
    a, w = jnp.ones((64, 32)), jnp.ones((32, 16))
    intel = cpu_sgemm.cpu_vendor() == "GenuineIntel"
    with cpu_sgemm.mode("auto"):
        assert cpu_sgemm.use_for(a, w) == intel
        assert cpu_sgemm.use_for_attention(a[None, :, None], a[None, :, None], a[None, :, None])
        assert cpu_sgemm.status().startswith("mkl")
        assert ("wan22_cpu_sgemm" in jax.jit(cpu_sgemm.matmul).lower(a, w).as_text()) == intel
    with cpu_sgemm.mode("xla"):
        assert not cpu_sgemm.use_for_attention(a[None, :, None], a[None, :, None], a[None, :, None])
        assert cpu_sgemm.status().startswith("xla")
    with pytest.raises(ValueError, match="'mlk'"):
        with cpu_sgemm.mode("mlk"):
            pass


def test_dit_forward_equals_the_xla_dot_forward(mkl_linears):
    """1,280 tokens (blocked self-attention), a short prompt (the padding row), fp32: MKL vs XLA's dots."""
    cfg = dataclasses.replace(DIT_PRESETS["tiny-t2v"], dim=64, num_heads=2, num_layers=2, text_len=32)
    graphdef, state = nnx.split(WanModel(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(3)
    x, t, ctx = _x(rng, 1, 16, 4, 40, 32), jnp.array([700.0]), _x(rng, 1, 9, cfg.text_dim)

    def fwd(s, x, t, c):
        return nnx.merge(graphdef, s)(x, t, c)

    assert "wan22_cpu_sgemm" in jax.jit(fwd).lower(state, x, t, ctx).as_text()
    got = jax.jit(fwd)(state, x, t, ctx)
    with cpu_sgemm.disabled():
        ref = jax.jit(lambda *a: fwd(*a))(state, x, t, ctx)
    assert rel_err(got, ref) < 1e-6


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
    for g, r in zip(fused(q, k, v), plain(q, k, v)):
        assert rel_err(g, r) < 1e-5


@pytest.mark.parametrize("lq", [200, 1600])
def test_attention_entry_point_takes_the_fused_kernel(lq):
    from wan22_jax.models.attention import _dense, attention
    rng = np.random.default_rng(5)
    q, k, v = _x(rng, 1, lq, 2, 64), _x(rng, 1, 90, 2, 64), _x(rng, 1, 90, 2, 64)
    mask = jnp.asarray(np.arange(90)[None] < 80)
    fn = jax.jit(lambda q, k, v: attention(q, k, v, kv_mask=mask))
    assert "wan22_cpu_attention" in fn.lower(q, k, v).as_text()
    with cpu_sgemm.disabled():
        ref = _dense(q, k, v, mask, None, 64 ** -0.5)
    assert rel_err(fn(q, k, v), ref) < 2e-6
