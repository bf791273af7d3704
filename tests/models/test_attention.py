"""The attention entry point: implementations agree; the blocked long-sequence path equals the dense one."""

import jax.numpy as jnp
import numpy as np
import pytest

from wan22_jax.ops.attention import _dense, attention, query_block


def test_query_block_choice():
    assert query_block(512) is None and query_block(1031) is None  # short, prime: dense
    assert query_block(1600, 1600, 6) == 400 and query_block(1600, 512, 6) == 400
    assert query_block(3600, 3600, 6) == 240  # the largest divisor whose logits fit the cache budget
    assert query_block(75600, 75600, 40) == 135  # nothing fits: the smallest divisor, memory still bounded


@pytest.mark.parametrize("masked", [False, True])
def test_blocked_equals_dense_and_dot_product(masked):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 1600, 2, 16)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(np.arange(1600)[None] < np.array([[1600], [1100]])) if masked else None
    blocked = np.asarray(attention(q, k, v, kv_mask=mask, impl="xla"))
    dense = np.asarray(_dense(q, k, v, mask, None, 0.25))
    np.testing.assert_allclose(blocked, dense, rtol=0, atol=1e-6)
    dp = np.asarray(attention(q, k, v, kv_mask=mask, impl="dot_product"))
    np.testing.assert_allclose(dp, dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_splash_kernel_equals_dense(masked):
    # the TPU kernel, run by Pallas' interpreter here; lengths that are not multiples of its block
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((2, 200, 2, 128)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, 150, 2, 128)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(np.arange(150)[None] < np.array([[150], [90]])) if masked else None
    got = np.asarray(attention(q, k, v, kv_mask=mask, impl="splash"))
    ref = np.asarray(_dense(q, k, v, mask, None, 128 ** -0.5))
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-5
    bias = jnp.zeros((1, 2, 200, 150))  # a logits bias (T5) is not the kernel's: the reference runs
    np.testing.assert_array_equal(np.asarray(attention(q, k, v, bias=bias, impl="splash")),
                                  np.asarray(attention(q, k, v, bias=bias, impl="xla")))


def test_unknown_implementation_is_named():
    x = jnp.zeros((1, 4, 1, 8))
    with pytest.raises(ValueError, match="flash3"):
        attention(x, x, x, impl="flash3")


@pytest.mark.parametrize("lq", [200, 1600])  # dense and blocked
def test_key_bias_counts_a_repeated_key(lq):
    """One key with bias log(c) attends exactly like c copies of it (the DiT's text padding row)."""
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((2, lq, 2, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, 9, 2, 16)), jnp.float32) for _ in range(2))
    bias = jnp.zeros((9,)).at[-1].set(np.log(7.0))
    expanded = [jnp.concatenate([a, jnp.repeat(a[:, -1:], 6, axis=1)], axis=1) for a in (k, v)]
    ref = np.asarray(_dense(q, *expanded, None, None, 0.25))
    for impl in ("xla", "dot_product"):
        got = np.asarray(attention(q, k, v, key_bias=bias, scale=0.25, impl=impl))
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-6, impl
    # splash has no per-key bias: it runs the reference
    np.testing.assert_array_equal(np.asarray(attention(q, k, v, key_bias=bias, impl="splash")),
                                  np.asarray(attention(q, k, v, key_bias=bias, impl="xla")))
