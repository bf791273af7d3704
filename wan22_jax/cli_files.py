"""The files a `wan22 generate` run reads and writes besides the checkpoint, shared by its tasks' commands
(generate_cli.py, generate_s2v.py, animate_cli.py): text embeddings in, the video out with its one-line summary."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from wan22_jax.bench.timing import peak_bytes
from wan22_jax.errors import InputError, InputFileError
from wan22_jax.video import PipelineOutput

EMBED_SUFFIXES = (".safetensors", ".npy")


def read_embeds(path: str, flag: str) -> np.ndarray:
    """A [L, text_dim] (or [1, L, text_dim]) array from a .safetensors file holding one tensor, or a .npy.

    Args:
      path: the file; flag: the option that named it, for the error messages ("--prompt-embeds").
    Returns:
      The array as stored (its shape is checked by the pipeline's call). Raises InputError (wrong suffix, not
      one tensor) or InputFileError (missing, unreadable).
    """
    p = Path(path)
    if p.suffix not in EMBED_SUFFIXES:
        raise InputError(f"{flag} {path}: expected a {' or '.join(EMBED_SUFFIXES)} file")
    if not p.is_file():
        raise InputFileError(f"{flag} {path}: no such file")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        tensors = load_file(p)
    except (OSError, ValueError, SafetensorError) as e:
        raise InputFileError(f"{flag} {path}: cannot read it ({e})") from e
    if len(tensors) != 1:
        raise InputError(f"{flag} {path}: holds {len(tensors)} tensors ({sorted(tensors)}); expected one")
    return next(iter(tensors.values()))


def embeds_from_args(args) -> dict:
    """{"prompt_embeds", "negative_prompt_embeds"}: the arrays of --prompt-embeds / --negative-prompt-embeds (None
    where not given), refusing a text and its embeddings given together.

    Args:
      args: the parsed `wan22 generate` options (prompt, negative_prompt and their *_embeds file paths).
    """
    out = {}
    for key in ("prompt", "negative_prompt"):
        flag = f"--{key.replace('_', '-')}"
        path = getattr(args, f"{key}_embeds")
        if path is not None and getattr(args, key) is not None:
            raise InputError(f"give {flag} or {flag}-embeds, not both")
        out[f"{key}_embeds"] = None if path is None else read_embeds(path, f"{flag}-embeds")
    return out


def save_and_report(out: PipelineOutput, path, fps: int | None, t0: float, load_s: float, detail: str = "") -> Path:
    """Writes the run's (first) video and prints one line: where, frames and size, `detail`, the times and the
    peak memory.

    Args:
      out: the pipeline's output; path: the --out file; fps: --fps (None: the video's own).
      t0: time.perf_counter() at the command's start; load_s: seconds spent loading; detail: e.g. " (replace)".
    Returns:
      The path written.
    """
    written = out.videos[0].save(path, fps=fps)
    frames = out.videos[0].frames
    print(f"wrote {Path(written).resolve()}: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}{detail}, "
          f"load {load_s:.1f}s, generate {out.denoise_s:.1f}s, total {time.perf_counter() - t0:.1f}s, "
          f"peak memory {peak_bytes() / 2**30:.2f} GiB")
    return Path(written)


__all__ = ["EMBED_SUFFIXES", "embeds_from_args", "read_embeds", "save_and_report"]
