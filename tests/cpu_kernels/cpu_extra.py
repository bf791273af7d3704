"""The CPU kernels' tests run whenever the `cpu` extra is installed, and then a kernel that fails to build or
load FAILS them (no skip): CI installs the extra, so these tests cannot pass by skipping there."""

import importlib.metadata

import pytest


def installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def require(kernel_module, dist: str):
    """A fixture body: skip when `dist` (the library the kernel links) is not installed, else the kernel must
    load."""
    if not installed(dist):
        pytest.skip(f"the `cpu` extra is not installed (no {dist})")
    assert kernel_module.available(), kernel_module.status()
