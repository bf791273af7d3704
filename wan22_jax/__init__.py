"""wan22_jax: Wan2.2 (T2V-A14B, I2V-A14B, TI2V-5B) in JAX/Flax NNX, numerically equal to the official code."""

__version__ = "0.1.0"
