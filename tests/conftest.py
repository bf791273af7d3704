import os

import pytest

# The CLI turns on JAX's persistent compilation cache; tests that call it in-process must not change the
# test process's JAX configuration (tests/test_compile_cache.py checks the cache in subprocesses).
os.environ.setdefault("WAN22_COMPILATION_CACHE", "0")

from refcases import REFERENCE_DIR
from wan22_jax.presets import random_pipeline


@pytest.fixture(scope="session")
def reference_dir():
    # the reference cases are part of the test inputs (tests/test_reference_cases.py fails without them too):
    # a missing folder fails the tests that need it instead of skipping them
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"no reference cases at {REFERENCE_DIR} (set WAN22_REFERENCE_DIR)")
    return REFERENCE_DIR


# tiny random pipelines of the two architectures (one DiT + VAE 2.2; two experts + VAE 2.1), built once per
# test module that asks for them (tests/pipeline/test_pipeline.py, tests/lora/test_lora_pipeline.py,
# tests/test_user_errors.py)
@pytest.fixture(scope="module")
def ti2v():
    return random_pipeline("ti2v-5B")


@pytest.fixture(scope="module")
def t2v():
    return random_pipeline("t2v-A14B")
