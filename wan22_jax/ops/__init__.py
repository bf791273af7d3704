"""The ops layer: every matmul, attention and convolution of the models, each with an explicit implementation.

`Kernels` (frozen, hashable) names the implementation of each op; models store it on the modules that call an op,
so it is part of the graphdef jit compiles for. The default, `XLA`, is XLA on every backend and is what the parity
suite runs; `Kernels.cpu()` opts into the CPU kernels (wan22_jax.cpu_kernels), `Kernels(attention="cudnn")` /
`"splash"` into the accelerator kernels. fp32 ops run at Precision.HIGHEST on every backend.
"""

from wan22_jax.ops.attention import attention
from wan22_jax.ops.conv import conv2d, conv3d
from wan22_jax.ops.kernels import XLA, Kernels, kernels_of, parse_cpu_kernels, with_kernels
from wan22_jax.ops.matmul import matmul, precision_for

__all__ = ["XLA", "Kernels", "attention", "conv2d", "conv3d", "kernels_of", "matmul", "parse_cpu_kernels",
           "precision_for", "with_kernels"]
