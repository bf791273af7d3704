"""Task presets: which models a task uses and its sampling defaults (official wan/configs/wan_*.py).

Model shapes come from the checkpoint (config.json, vae_config.json, t5_config.json); a task adds what the
checkpoint does not say: the conditioning mode, the expert boundary, and the defaults of `generate`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from wan22_jax.config_utils import config_from_dict
from wan22_jax.errors import CheckpointFormatError, InputError

# The official default negative prompt (wan/configs/shared_config.py); parity needs the exact string.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)

MODES = ("t2v", "i2v", "ti2v")

# The one set of dtype spellings, shared by the CLI (--dtype), `from_pretrained(dtype=...)`, task files and the
# training config: short and long names, case-insensitive, or the dtype objects themselves.
DTYPE_NAMES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}


def dtype_name(value: Any, what: str = "dtype") -> str:
    """The canonical name ("bfloat16" or "float32") of a dtype given as a name or a dtype object.

    Args:
      value: "bf16", "bfloat16", "fp32", "float32" (any case), jnp.bfloat16, jnp.float32, np.float32...
      what: the argument's name, for the error message.
    Returns:
      "bfloat16" or "float32"; raises InputError naming `what`, the value and the accepted spellings otherwise.
    """
    if isinstance(value, str):
        key = value.strip().lower()
    else:
        try:
            key = np.dtype(value).name
        except TypeError:
            key = None
    if key not in DTYPE_NAMES:
        hint = (" (float16 is not supported: Wan2.2 runs in bf16 or fp32, as the official code)"
                if key in ("float16", "fp16", "half") else "")
        raise InputError(f"{what}={value!r} is not a supported dtype: use one of {sorted(DTYPE_NAMES)}{hint}")
    return DTYPE_NAMES[key]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """One generation task.

    mode: "t2v" (text only), "i2v" (A14B image: mask + image latent concatenated on channels), "ti2v" (5B:
      text only, or an image whose latent replaces the first latent frame after every step).
    boundary: A14B expert switch: the high-noise expert runs while t >= boundary * num_train_timesteps.
    guide_scale: (low_noise, high_noise) scales; single-expert tasks use the same value twice.
    size: default (width, height); supported_sizes: the official list (others are allowed if divisible).
    max_area: default pixel area for image-conditioned sizes.
    """

    name: str
    mode: str
    dit_preset: str
    two_experts: bool
    boundary: float | None = None
    vae_version: str = "2.1"
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    t5_preset: str = "umt5-xxl"
    text_len: int = 512
    sample_shift: float = 5.0
    sample_steps: int = 50
    guide_scale: tuple[float, float] = (5.0, 5.0)
    frame_num: int = 81
    fps: int = 16
    size: tuple[int, int] = (1280, 720)
    supported_sizes: tuple[tuple[int, int], ...] = ()
    max_area: int = 1280 * 720
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    num_train_timesteps: int = 1000
    dtype: str = "bfloat16"  # the DiT dtype `from_pretrained` uses unless told (releases: bf16, as official)

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype, f"task {self.name}: dtype"))
        if self.mode not in MODES:
            raise InputError(f"task mode {self.mode!r} is not one of {MODES}")
        if self.two_experts and self.boundary is None:
            raise InputError(f"task {self.name}: two experts need a boundary")

    @property
    def spatial_multiple(self) -> int:
        """Height and width must be multiples of this (VAE stride times DiT patch)."""
        return self.vae_stride[1] * self.patch_size[1]


TASKS: dict[str, TaskConfig] = {
    "t2v-A14B": TaskConfig(
        name="t2v-A14B", mode="t2v", dit_preset="t2v-A14B", two_experts=True, boundary=0.875,
        sample_shift=12.0, sample_steps=40, guide_scale=(3.0, 4.0), frame_num=81, fps=16, size=(1280, 720),
        supported_sizes=((720, 1280), (1280, 720), (480, 832), (832, 480)), max_area=1280 * 720),
    "i2v-A14B": TaskConfig(
        name="i2v-A14B", mode="i2v", dit_preset="i2v-A14B", two_experts=True, boundary=0.900,
        sample_shift=5.0, sample_steps=40, guide_scale=(3.5, 3.5), frame_num=81, fps=16, size=(1280, 720),
        supported_sizes=((720, 1280), (1280, 720), (480, 832), (832, 480)), max_area=1280 * 720),
    "ti2v-5B": TaskConfig(
        name="ti2v-5B", mode="ti2v", dit_preset="ti2v-5B", two_experts=False, vae_version="2.2",
        vae_stride=(4, 16, 16), sample_shift=5.0, sample_steps=50, guide_scale=(5.0, 5.0), frame_num=121, fps=24,
        size=(1280, 704), supported_sizes=((704, 1280), (1280, 704)), max_area=1280 * 704),
}


def get_task(name: str) -> TaskConfig:
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]


def task_for_model_type(model_type: str, two_experts: bool) -> TaskConfig:
    """The task a checkpoint serves, from its DiT model_type and whether it has two experts."""
    key = {("t2v", True): "t2v-A14B", ("i2v", True): "i2v-A14B", ("ti2v", False): "ti2v-5B"}.get(
        (model_type, two_experts))
    if key is None:
        raise InputError(f"no task for a {'two-expert' if two_experts else 'single'} {model_type!r} checkpoint")
    return TASKS[key]


TASK_FILE = "task.json"  # a checkpoint folder's own task (the mini-world model ships one)


def load_task_file(path) -> TaskConfig:
    """The TaskConfig stored in `path` (a task.json), strictly parsed."""
    return config_from_dict(TaskConfig, read_json(path, "task file"), source=str(path))


def read_json(path, what: str = "config file") -> dict:
    """A JSON object read from `path`; a missing, unreadable, truncated or non-object file raises
    CheckpointFormatError naming the file (json's own error names only a line and column)."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise CheckpointFormatError(f"{path}: cannot read the {what} ({e.strerror or e})") from e
    except ValueError as e:
        raise CheckpointFormatError(f"{path}: the {what} is not valid JSON (truncated or corrupt? {e})") from e
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{path}: the {what} must be a JSON object, found {type(raw).__name__}")
    return raw
