"""The opt-in CPU kernels: XLA FFI custom calls that XLA:CPU does not provide, compiled on first use (build.py):
MKL's sgemm and a fused attention for fp32 (sgemm), oneDNN's fp32 convolutions for the VAEs (conv).

Nothing runs them unless asked: a model's `wan22_jax.ops.Kernels` names "cpu" for an op (`Kernels.cpu()`, the
CLI's `--cpu-kernels`). They need the `cpu` extra (MKL and oneDNN from PyPI) and a C++ compiler; without them
the ops layer logs one line and runs XLA. This package imports nothing else of wan22_jax.
"""
