"""Building a kernel: a missing compiler or a failing load gives one clear line (logged once) and the XLA path."""

import logging

import pytest

from wan22_jax.cpu_kernels import build


def test_a_kernel_that_cannot_load_is_reported_once(caplog):
    def load():
        raise FileNotFoundError("MKL is not installed (no libmkl_rt.so under the Python prefix)")

    lazy = build.Lazy("test", load)
    with caplog.at_level(logging.WARNING, logger="wan22_jax"):
        assert not lazy.ready() and not lazy.ready()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["wan22_jax: the CPU test kernel is unavailable (MKL is not installed (no libmkl_rt.so under "
                     "the Python prefix)); XLA runs instead"]


def test_a_missing_compiler_is_named(tmp_path, monkeypatch):
    src = tmp_path / "k.cc"
    src.write_text("int x;\n")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("WAN22_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"no C\+\+ compiler .*no-such-c\+\+.*\(set CXX\) to build k\.cc"):
        build.compile_library(src)


def test_a_build_that_fails_says_why(tmp_path, monkeypatch):
    src = tmp_path / "bad.cc"
    src.write_text("this is not C++\n")
    monkeypatch.setenv("WAN22_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="compiling bad.cc failed"):
        build.compile_library(src)
    assert not list((tmp_path / "cache").glob("*.so*"))  # no partial library left behind
