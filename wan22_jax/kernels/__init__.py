"""Kernels that XLA:CPU does not provide, as XLA FFI custom calls compiled on first use (build.py): MKL's sgemm
and a fused attention for fp32 matmuls (cpu_sgemm), oneDNN's fp32 convolutions for the VAEs (cpu_conv)."""
