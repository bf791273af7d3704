"""8 simulated CPU devices for the sharding tests.

JAX reads XLA_FLAGS once, at its first import. Run alone (`pytest tests/sharding`), this conftest sets the flag
before anything imports jax and `_impl/` is collected directly. In the full suite jax is already imported with one
device, so `_impl/` is skipped here and `test_multidevice.py` runs it in a subprocess with the flag set.
"""

import os
import sys

DEVICE_FLAG = "--xla_force_host_platform_device_count=8"

if "jax" not in sys.modules and DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}".strip()

import jax  # noqa: E402

MULTI_DEVICE = jax.device_count() >= 8
collect_ignore = [] if MULTI_DEVICE else ["_impl"]
