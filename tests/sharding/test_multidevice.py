"""Runs tests/sharding/_impl on 8 simulated CPU devices in a subprocess (see conftest.py for why)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

HERE = Path(__file__).parent
DEVICE_FLAG = "--xla_force_host_platform_device_count=8"


# slow (35 s): tests/sharding/test_multihost.py and test_sharding_rules.py stay in the default suite
@pytest.mark.slow
def test_sharded_suite_on_8_devices():
    if jax.device_count() >= 8:
        pytest.skip("this process already has 8 devices: _impl is collected directly")
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}".strip())
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                           str(HERE / "_impl")], cwd=HERE.parents[1], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
