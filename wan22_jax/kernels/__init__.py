"""Kernels that XLA does not provide: MKL sgemm for fp32 matmuls on the CPU (cpu_sgemm)."""
