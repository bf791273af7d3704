"""Finds the components of a checkpoint folder and converts each one (the engine behind `wan22 convert`).

Layouts understood:
  * a single DiT folder: config.json + diffusion_pytorch_model*.safetensors (official or Diffusers);
  * an official release folder: DiT at the root (ti2v-5B) or in high_noise_model/ + low_noise_model/ (A14B),
    plus whatever VAE / text encoder / tokenizer files it holds (converted by their own modules when present).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from wan22_jax.convert import t5 as t5_convert, vae as vae_convert
from wan22_jax.convert.dit import load_dit, read_dit_config, save_dit
from wan22_jax.errors import CheckpointFormatError
from wan22_jax.io.atomic import atomic_path

EXPERTS = ("high_noise_model", "low_noise_model")


def _is_dit_folder(p: Path) -> bool:
    return (p / "config.json").is_file() and (
        (p / "diffusion_pytorch_model.safetensors").is_file()
        or (p / "diffusion_pytorch_model.safetensors.index.json").is_file())


def plan(src: Path) -> list[tuple[str, Callable[[Path], None]]]:
    """(output sub-path, writer) for every component found in `src`; raises if there is none."""
    def dit_writer(folder: Path):
        def write(dst: Path):
            model = load_dit(folder)
            save_dit(model, read_dit_config(folder)[0], dst)
        return write

    jobs: list[tuple[str, Callable[[Path], None]]] = []
    if _is_dit_folder(src):
        jobs.append(("." if not any((src / e).is_dir() for e in EXPERTS) else "dit", dit_writer(src)))
    for expert in EXPERTS:
        if _is_dit_folder(src / expert):
            jobs.append((expert, dit_writer(src / expert)))
    jobs += _other_components(src)
    if not jobs:
        raise CheckpointFormatError(f"{src}: no convertible component found (expected a DiT folder with "
                                    "config.json + diffusion_pytorch_model*.safetensors, or a release folder)")
    return jobs


def _other_components(src: Path) -> list[tuple[str, Callable[[Path], None]]]:
    """VAE, text encoder and tokenizer (the first two written by their converter modules)."""
    jobs = vae_convert.release_jobs(src) + t5_convert.release_jobs(src)
    tok = src / "google" / "umt5-xxl"
    if tok.is_dir():
        jobs.append(("google/umt5-xxl", lambda dst, tok=tok: shutil.copytree(tok, dst)))
    return jobs


def convert_release(src: Path, dst: Path) -> list[str]:
    """Converts every component of `src` into `dst` atomically. Returns the component names written."""
    jobs = plan(src)
    single = len(jobs) == 1 and jobs[0][0] == "."
    with atomic_path(dst, is_dir=True) as tmp:
        for name, write in jobs:
            write(tmp if single else tmp / name)
    return [name for name, _ in jobs]
