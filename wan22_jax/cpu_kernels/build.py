"""Compiles a kernel's C++ source (an XLA FFI handler) with the system compiler on first use, cached on disk.

A build has a time limit (BUILD_TIMEOUT_S); a missing compiler, library or header, a failed or timed-out build
leaves the kernel unavailable with one line saying why (`Lazy.ready` logs it once), and the ops layer runs XLA.

The cache key covers the source, the jaxlib it is built against, this CPU's instruction sets (`-march=native`;
a cache folder may be shared between hosts) and the flags, so a stale library is never loaded. A build is written
to a temporary file and renamed into place: a concurrent or interrupted build never leaves a partial library.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib

# -fno-trapping-math lets GCC vectorise loops with exp (10x for the attention's); no kernel reads FP exceptions
BUILD_TIMEOUT_S = 300  # one kernel compiles in 10-40 s on 2 cores
LOG = logging.getLogger("wan22_jax")
CFLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-fopenmp-simd", "-std=c++17",
          "-shared", "-fPIC", "-w")


def cache_dir() -> Path:
    return Path(os.environ.get("WAN22_KERNEL_CACHE", Path.home() / ".cache" / "wan22_jax" / "kernels"))


@functools.cache
def cpuinfo(field: str) -> str:
    """The first /proc/cpuinfo value of `field` ('flags', 'vendor_id', ...), or '' where there is none."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), "")


def compile_library(source: Path, *, include_dirs: Sequence[str] = (), link_args: Sequence[str] = (),
                    key_extra: bytes = b"") -> Path:
    """The shared library built from `source` (cached); raises RuntimeError with the compiler's message or when
    the build takes over BUILD_TIMEOUT_S, FileNotFoundError when there is no compiler."""
    compiler = os.environ.get("CXX", "c++")
    head = [compiler, *CFLAGS, *(f"-I{d}" for d in (jax.ffi.include_dir(), *include_dirs)), str(source)]
    isa = cpuinfo("flags") or platform.processor()
    key = hashlib.sha256(source.read_bytes() + jaxlib.__version__.encode() + isa.encode()
                         + " ".join([*head, *link_args]).encode() + key_extra).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    cmd = [*head, "-o", tmp, *link_args]  # libraries after the source that uses them
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"compiling {source.name} took over {BUILD_TIMEOUT_S} s; gave up") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"no C++ compiler {compiler!r} (set CXX) to build {source.name}") from None
        if proc.returncode:
            raise RuntimeError(f"compiling {source.name} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class Lazy:
    """A kernel loaded on first use: `ok()` runs `load` once (thread-safe) and remembers why it failed."""

    def __init__(self, name: str, load: Callable[[], Any], library: str = ""):
        self.name, self.library, self._load, self._lock = name, library, load, threading.Lock()
        self.done, self.why, self.value, self.warned = False, "", None, False

    def ok(self) -> bool:
        with self._lock:
            if not self.done:
                try:
                    self.value = self._load()  # kept alive: the registered handlers live in it
                except (OSError, RuntimeError, AttributeError) as err:
                    self.why = str(err).splitlines()[0]
                self.done = True
        return self.value is not None

    def ready(self) -> bool:
        """`ok()`, logging one line the first time the kernel is asked for and cannot be had."""
        if self.ok():
            return True
        if not self.warned:
            self.warned = True
            LOG.warning("wan22_jax: the CPU %s kernel is unavailable (%s); XLA runs instead", self.name, self.why)
        return False

    def status(self) -> str:
        """The library it runs on ('mkl', 'onednn') when loaded, else 'unavailable (<why>)'."""
        return self.library if self.ok() else f"unavailable ({self.why})"
