"""A pipeline's folder: the embedded default model, the JSON files checked before any weight is read, the text
encoder and its tokenizer found (or the missing folder named), and `save_pipeline` writing our converted format
(the layout `wan22 convert` writes, which `Wan22Pipeline.from_pretrained` reads back)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from flax import nnx

from wan22_jax.config_utils import config_to_dict
from wan22_jax.configs import TASK_FILE, dtype_name, read_json
from wan22_jax.convert.dit import save_dit
from wan22_jax.convert.ours import save as save_ours
from wan22_jax.errors import InputError
from wan22_jax.io.atomic import atomic_path
from wan22_jax.models.tokenizer import TOKENIZER_SUBFOLDERS
from wan22_jax.ops import Kernels
from wan22_jax.text_encoder import TextEncoder

EXPERTS = ("high_noise_model", "low_noise_model")


def default_checkpoint() -> Path:
    """The embedded default model: the mini-world model shipped in the package (wan22_jax/assets/mini_world/,
    built by experiments/mini_world/build_default.py), laid out like an official release folder."""
    path = Path(__file__).parent.parent / "assets" / "mini_world"
    if not path.is_dir():
        raise InputError(f"no checkpoint given and the embedded default model is missing ({path}); reinstall the "
                         "package, rebuild it with experiments/mini_world/build_default.py, or pass a checkpoint")
    return path


def check_json_files(path: Path) -> None:
    """Reads every JSON file of a checkpoint folder (and its expert, vae, t5 subfolders) before any weight is
    loaded: a truncated or corrupt one raises CheckpointFormatError naming it."""
    for folder in (path, *(path / s for s in (*EXPERTS, "vae", "t5"))):
        if folder.is_dir():
            for f in sorted(folder.glob("*.json")):
                read_json(f, f.name)


def load_text_encoder(path: Path, text_len: int, dtype, kernels: Kernels) -> tuple[TextEncoder | None, str]:
    """(the folder's text encoder, "") or (None, why there is none: the tokenizer folder that is missing)."""
    for sub in TOKENIZER_SUBFOLDERS:
        tokenizer_dir = path / sub
        if tokenizer_dir.is_dir():
            return TextEncoder.from_pretrained(path, text_len=text_len, dtype=dtype, param_dtype=dtype,
                                               kernels=kernels, tokenizer_path=tokenizer_dir), ""
    wanted = " or ".join(str(path / s) + "/" for s in TOKENIZER_SUBFOLDERS)
    return None, (f"{path} has no tokenizer folder ({wanted} not found; copy the release's google/umt5-xxl/ "
                  "folder there to use prompts)")


def save_pipeline(pipe: Any, dst: str | Path) -> Path:
    """Writes `pipe` in our converted format, atomically (nothing at `dst` unless complete).

    Layout: the DiT at the root (one expert) or in high_noise_model/ + low_noise_model/, vae/, and with a text
    encoder t5/ and its tokenizer in google/umt5-xxl/; task.json holds the task (sampling defaults included).

    Args:
      pipe: a Wan22Pipeline. dst: a folder that must not exist yet.
    Returns:
      dst.
    """
    dst = Path(dst)
    if dst.exists():
        raise InputError(f"{dst} already exists: save_pretrained writes a new folder")
    with atomic_path(dst, is_dir=True) as tmp:
        for name, (_, state) in pipe.experts.items():
            save_dit(state, pipe.dit_config, tmp if name == "model" else tmp / name)
        save_ours(nnx.merge(*pipe.vae), "vae", pipe.vae_config, tmp / "vae")
        if pipe.text_encoder is not None:
            t5 = pipe.text_encoder.model()
            save_ours(t5, "t5", t5.cfg, tmp / "t5")
            shutil.copytree(pipe.text_encoder.tokenizer.path, tmp / TOKENIZER_SUBFOLDERS[0])
        task = config_to_dict(dataclasses.replace(pipe.task, text_len=pipe.dit_config.text_len,
                                                   dtype=dtype_name(pipe.dtype)))
        (tmp / TASK_FILE).write_text(json.dumps(task, indent=1, ensure_ascii=False))
    return dst
