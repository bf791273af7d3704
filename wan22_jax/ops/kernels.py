"""Which implementation runs each op: a frozen, hashable choice that the models carry in their graphdef.

Every matmul, attention and convolution of the models goes through `wan22_jax.ops` with an explicit
implementation name. The names come from one `Kernels` value, stored on each module that calls an op (a static
attribute, so it is part of the `graphdef` that `jax.jit` compiles for: two choices never share a compiled
program). Nothing else decides: no environment variable, thread-local, backend query or CPU vendor check changes
what a traced program contains. The default is XLA everywhere, which is what the parity suite runs.

    model = with_kernels(load_dit(folder), Kernels.cpu())          # the opt-in CPU kernels (wan22_jax.cpu_kernels)
    model = with_kernels(model, Kernels(attention="cudnn"))          # cuDNN flash attention on NVIDIA GPUs

See docs/architecture.md §3.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from flax import nnx

from wan22_jax.errors import ConfigError

MATMULS = ("xla", "cpu")
# "xla": written-out attention (fp32 logits and softmax), query-blocked for long sequences; "dot_product":
# jax.nn.dot_product_attention with XLA's choice; "cudnn": cuDNN flash attention (NVIDIA, bf16/fp16);
# "splash": the Pallas splash-attention TPU kernel; "cpu": the fused MKL kernel (wan22_jax.cpu_kernels).
ATTENTIONS = ("xla", "dot_product", "cudnn", "splash", "cpu")
# "xla": one XLA convolution; "taps": a 3x3x3 conv as three 2-D convs (faster on XLA:CPU for large frames);
# "im2col": taps gathered into channels, one matmul (fast gradients for narrow layers on CPU); "dots": a scan of
# per-tap matmuls (compiles several times faster than a convolution for TPUs); "cpu": oneDNN.
CONVS = ("xla", "taps", "im2col", "dots", "cpu")
CPU_OPS = ("matmul", "attention", "conv")


@dataclasses.dataclass(frozen=True, slots=True)
class Kernels:
    """The implementation of each op. Hashable: it lives in the models' graphdefs and jit cache keys."""

    matmul: str = "xla"
    attention: str = "xla"
    conv: str = "xla"

    def __post_init__(self):
        for field, allowed in (("matmul", MATMULS), ("attention", ATTENTIONS), ("conv", CONVS)):
            value = getattr(self, field)
            if value not in allowed:
                raise ConfigError(f"Kernels.{field}={value!r}: expected one of {', '.join(allowed)}")

    @classmethod
    def cpu(cls, ops: Iterable[str] = CPU_OPS) -> "Kernels":
        """The CPU kernels (MKL sgemm, fused MKL attention, oneDNN convolutions) for `ops`, XLA for the rest.

        On Intel CPUs all three help; on AMD EPYC (Zen 4) XLA's dot beats MKL's sgemm, so `("attention", "conv")`
        is the faster set there (README, "Performance").
        """
        ops = tuple(ops)
        unknown = sorted(set(ops) - set(CPU_OPS))
        if unknown:
            raise ConfigError(f"unknown CPU kernel op(s) {unknown}: expected some of {', '.join(CPU_OPS)}")
        return cls(**{op: "cpu" for op in ops})

    @property
    def uses_cpu_kernels(self) -> bool:
        return "cpu" in (self.matmul, self.attention, self.conv)


XLA = Kernels()


def parse_cpu_kernels(spec: str | None) -> Kernels:
    """The CLI's `--cpu-kernels[=OPS]`: None -> XLA; "" or "all" -> every CPU kernel; "attention,conv" -> those."""
    if spec is None or spec == "none":
        return XLA
    if spec in ("", "all"):
        return Kernels.cpu()
    return Kernels.cpu(tuple(s.strip() for s in spec.split(",") if s.strip()))


def with_kernels(module: nnx.Module, kernels: Kernels) -> nnx.Module:
    """A copy of `module` whose every submodule that calls an op uses `kernels` (the original is unchanged).

    Parameters are shared with the original (arrays are immutable), only the static choice differs, so the
    result's graphdef compiles to a different program.
    """
    if not isinstance(kernels, Kernels):
        raise ConfigError(f"kernels must be a wan22_jax.ops.Kernels, got {type(kernels).__name__}")
    copy = nnx.merge(*nnx.split(module))
    for _, node in nnx.iter_graph(copy):
        if isinstance(node, nnx.Module) and hasattr(node, "kernels"):
            node.kernels = kernels
    return copy


def kernels_of(module: nnx.Module) -> set[Kernels]:
    """The distinct `Kernels` values used inside `module` (one, for a model built or retargeted as a whole)."""
    return {node.kernels for _, node in nnx.iter_graph(module)
            if isinstance(node, nnx.Module) and hasattr(node, "kernels")}
