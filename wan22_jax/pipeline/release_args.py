"""The checks that the single-task pipelines (S2V-14B, Animate-14B) run on `from_pretrained`'s arguments before any
weight is read: the release folder (there, with readable JSON files) and the dtypes, one clear error each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from wan22_jax.configs import dtype_name
from wan22_jax.errors import InputError, InputFileError
from wan22_jax.pipeline.files import check_json_files


def release_folder(path: str | os.PathLike | None, no_path: str) -> Path:
    """The release folder as a Path, after reading its JSON files (`check_json_files`).

    Args:
      path: the folder the caller gave; no_path: the InputError message when it is None (these tasks have no
        embedded model).
    Returns:
      The folder. Raises InputError (None), InputFileError (not a folder), CheckpointFormatError (a broken JSON).
    """
    if path is None:
        raise InputError(no_path)
    path = Path(path)
    if not path.is_dir():
        raise InputFileError(f"{path}: checkpoint folder not found")
    check_json_files(path)
    return path


def model_dtypes(dtype: Any, t5_dtype: Any) -> tuple[Any, Any]:
    """(the DiT's dtype, the text encoder's) as jnp types from the CLI's or the API's spellings ("bf16",
    "float32", jnp.float32...): bfloat16 by default (the official bf16 runs), float32 when asked; the text encoder
    as the DiT unless `t5_dtype` is given. A spelling that is neither raises ConfigError naming the argument."""
    dit = jnp.float32 if dtype is not None and dtype_name(dtype, "dtype") == "float32" else jnp.bfloat16
    if t5_dtype is None:
        return dit, dit
    return dit, (jnp.float32 if dtype_name(t5_dtype, "t5_dtype") == "float32" else jnp.bfloat16)


__all__ = ["model_dtypes", "release_folder"]
