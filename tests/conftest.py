import pytest

from refcases import REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"no reference cases at {REFERENCE_DIR} (set WAN22_REFERENCE_DIR)")
    return REFERENCE_DIR
