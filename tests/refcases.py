"""Where the reference cases are (a uniquely named module: `conftest` is ambiguous once subfolders have one)."""

from wan22_jax.verify import default_reference_dir, find_cases

REFERENCE_DIR = default_reference_dir()


def reference_cases():
    return find_cases(REFERENCE_DIR) if REFERENCE_DIR.is_dir() else []
