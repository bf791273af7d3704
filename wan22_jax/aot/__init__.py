"""Ahead-of-time compilation for real TPU and NVIDIA targets on a CPU-only host (`wan22 aot`).

`targets` makes the target's devices without the hardware, `programs` builds each stage of a generation with
abstract parameters, `compile` compiles one and measures it, `hlo` reads the optimized HLO, `cli` is the command.
The compilers come from the `aot` extra (libtpu, the CUDA plugin), in an environment of its own.
"""
