"""The oneDNN convolution custom call equals a float64 convolution (2-D and 3-D, strides, uneven padding), its
gradients are XLA's, it is skipped where it must be, and the VAE decode through it equals XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cpu_extra import require
from flax import nnx

from wan22_jax.cpu_kernels import conv as cpu_conv
from wan22_jax.models.vae import random_vae
from wan22_jax.models.vae_config import preset
from wan22_jax.ops import Kernels, conv3d, with_kernels
from wan22_jax.verify import relative_error as rel_err


@pytest.fixture(autouse=True)
def onednn():
    require(cpu_conv, "onednn-devel-cpu-gomp")


def _conv64(x, k, strides, padding):
    """Direct float64 convolution, channels-last, by summing the kernel's taps."""
    x = np.pad(np.asarray(x, np.float64), [(0, 0), *padding, (0, 0)])
    k = np.asarray(k, np.float64)
    rank = len(strides)
    out = [(x.shape[i + 1] - k.shape[i]) // strides[i] + 1 for i in range(rank)]
    y = np.zeros((x.shape[0], *out, k.shape[-1]))
    for tap in np.ndindex(*k.shape[:rank]):
        window = tuple(slice(t, t + (n - 1) * s + 1, s) for t, n, s in zip(tap, out, strides, strict=True))
        y += np.einsum("...c,co->...o", x[(slice(None), *window)], k[tap])
    return y


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", [
    ((1, 5, 12, 10, 24), (3, 3, 3, 24, 40), (1, 1, 1), ((0, 0), (1, 1), (1, 1))),  # the causal 3x3x3
    ((2, 6, 8, 8, 16), (3, 1, 1, 16, 32), (2, 1, 1), ((0, 0), (0, 0), (0, 0))),  # stride-2 time_conv
    ((3, 17, 19, 8), (3, 3, 8, 5), (2, 2), ((0, 1), (0, 1))),  # Resample's ZeroPad2d((0, 1, 0, 1)) + stride 2
    ((2, 9, 7, 12), (1, 1, 12, 7), (1, 1), ((0, 0), (0, 0))),  # a 1x1 shortcut
])
def test_matches_float64_convolution(x_shape, k_shape, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
    assert cpu_conv.applies(x, k)
    fn = jax.jit(lambda x, k: cpu_conv.conv(x, k, strides, padding))
    assert "wan22_cpu_conv" in fn.lower(x, k).as_text()
    assert rel_err(fn(x, k), _conv64(x, k, strides, padding)) < 2e-6


def test_gradients_and_vmap_equal_xla():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 4, 6, 6, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 8, 4)), jnp.float32)
    pad = ((0, 0), (1, 1), (1, 1))

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.sin(fn(x, k)))

    ours = jax.grad(loss(lambda x, k: cpu_conv.conv(x, k, (1, 1, 1), pad)), (0, 1))(x, k)
    ref = jax.grad(loss(lambda x, k: cpu_conv._reference(x, k, (1, 1, 1), pad)), (0, 1))(x, k)
    for a, b in zip(ours, ref, strict=True):
        assert rel_err(a, b) < 1e-5
    per_example = jax.vmap(lambda xi: cpu_conv.conv(xi[None], k, (1, 1, 1), pad)[0])(x)
    assert rel_err(per_example, _conv64(x, k, (1, 1, 1), pad)) < 2e-6


def test_not_used_where_it_must_not_be():
    x, k = jnp.ones((1, 3, 4, 4, 8)), jnp.ones((3, 3, 3, 8, 8))
    assert not cpu_conv.applies(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    assert not cpu_conv.applies(x[0, 0], k[0, 0])  # one spatial axis is not a VAE convolution
    assert "wan22_cpu_conv" not in jax.jit(lambda x, k: conv3d(x, k)).lower(x, k).as_text()  # XLA by default
    assert "wan22_cpu_conv" in jax.jit(lambda x, k: conv3d(x, k, impl="cpu")).lower(x, k).as_text()
    with pytest.raises(ValueError, match="do not describe one convolution"):
        cpu_conv.conv(x, k, (1, 1), ((1, 1), (1, 1)))
    assert cpu_conv.status() == "onednn"


def test_vae_decode_equals_the_xla_convolutions():
    """The tiny Wan2.2 VAE (first chunk, cached chunks, up-sampling): oneDNN's convolutions vs XLA's."""
    graphdef, state = random_vae(preset("tiny2.2"))
    z = jnp.asarray(np.random.default_rng(2).standard_normal((1, 3, 4, 4, 48)), jnp.float32)
    fn = jax.jit(lambda graphdef, state, z: nnx.merge(graphdef, state).decode_frames(z), static_argnums=0)
    cpu_graphdef = nnx.split(with_kernels(nnx.merge(graphdef, state), Kernels.cpu(("conv",))))[0]
    assert "wan22_cpu_conv" in fn.lower(cpu_graphdef, state, z).as_text()
    assert "wan22_cpu_conv" not in fn.lower(graphdef, state, z).as_text()
    assert rel_err(fn(cpu_graphdef, state, z), fn(graphdef, state, z)) < 1e-5
