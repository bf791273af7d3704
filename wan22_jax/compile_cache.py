"""JAX's persistent compilation cache for the `wan22` command (and for notebooks that ask for it).

A second `wan22 generate` with the same shapes loads the compiled executables from disk instead of compiling
them again. The CLI turns it on; importing the library never changes JAX's global configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DIR = "WAN22_COMPILATION_CACHE"  # a folder, or "0" to switch the cache off


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wan22_jax" / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Caches every compiled executable (even fast compiles: a tiny pipeline's many small ones add up) under
    `path` (default: $WAN22_COMPILATION_CACHE, else ~/.cache/wan22_jax/xla). Returns the folder, or None
    when $WAN22_COMPILATION_CACHE is "0"."""
    import jax

    env = os.environ.get(ENV_DIR)
    if path is None and env == "0":
        return None
    folder = Path(path or env or default_dir())
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
