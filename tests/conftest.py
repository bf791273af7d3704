import os

import pytest

from wan22_jax.verify import default_reference_dir, find_cases

REFERENCE_DIR = default_reference_dir()


def reference_cases():
    return find_cases(REFERENCE_DIR) if REFERENCE_DIR.is_dir() else []


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"no reference cases at {REFERENCE_DIR} (set WAN22_REFERENCE_DIR)")
    return REFERENCE_DIR
