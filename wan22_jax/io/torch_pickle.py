"""Weights-only reading of official `.pth` files (torch pickles). torch is imported here and nowhere at runtime.

`torch.load(weights_only=True)` uses torch's restricted unpickler, which refuses any global that is not a tensor
or container type, so a crafted file cannot execute code. We never fall back to a plain unpickle.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes

from wan22_jax.errors import CheckpointFormatError
from wan22_jax.io.tensor_source import DictSource


def load_pth(path: str | os.PathLike) -> DictSource:
    """Loads a state dict from a .pth file as numpy arrays (bf16 kept as ml_dtypes.bfloat16)."""
    path = Path(path)
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise CheckpointFormatError(
            f"{path}: reading .pth files needs torch (pip install torch==2.13.0, or the [convert] extra)") from e
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... depending on the corruption
        raise CheckpointFormatError(
            f"{path}: refused or unreadable torch checkpoint (only plain tensor state dicts are accepted; "
            f"weights_only loading said: {str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path}: expected a state dict, found {type(state).__name__}")
    arrays = {}
    for k, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointFormatError(f"{path}: entry {k!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            arrays[k] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            arrays[k] = t.numpy()
    return DictSource(arrays, description=str(path))
