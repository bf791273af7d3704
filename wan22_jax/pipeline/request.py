"""Stage 1 of a generation: the call's arguments checked and resolved into one frozen `Request`.

Every check of a `Wan22Pipeline.__call__` argument happens here, before any model runs: a bad value raises one
`InputError` naming the argument, its value and what is allowed. Resolving includes the cheap host work that
the checks depend on (the output size from the image and max_area, the image resized to it, the sampler and its
schedule tables, whose coefficients can be invalid for some settings), so later stages take a valid request.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from wan22_jax import conditioning as cond
from wan22_jax.configs import TaskConfig
from wan22_jax.errors import InputError
from wan22_jax.models.dit import DiTConfig
from wan22_jax.models.step_cache import StepCache
from wan22_jax.samplers import get_sampler, make_schedule, official_schedule
from wan22_jax.samplers.schedule import Schedule

OFFICIAL_SOLVERS = ("unipc", "dpm++")
OUTPUT_TYPES = ("video", "latent")
# progress: True (a tqdm bar), False / None (silent), or a callable (steps_done, steps_total) -> None
Progress = bool | None | Callable[[int, int], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """One checked generation call (arrays are host numpy; eq=False: compared by identity).

    Attributes:
      batch: B, videos generated.
      prompts / negative_prompts: B strings each, or None where the matching embeddings are given.
      prompt_embeds / negative_prompt_embeds: [B, text_len, text_dim] float32 (zero-padded), or None.
      image: [H, W, 3] uint8 already at the output size, or None.
      num_frames, height, width: the output video; latent_shape: (z, F', h, w) of one latent.
      latents: [B, z, F', h, w] float32 explicit initial noise, or None (then drawn from `seed`).
      steps, shift, guidance_scale ((low_noise, high_noise)), solver, eta, seed: sampling settings.
      sampler / schedule / tables: the sampler, its schedule and `sampler.tables(schedule)` (host float64).
      batch_cfg, output_type, return_trajectory, step_cache, progress: as the call's arguments.
    """

    batch: int
    prompts: tuple[str, ...] | None
    negative_prompts: tuple[str, ...] | None
    prompt_embeds: np.ndarray | None
    negative_prompt_embeds: np.ndarray | None
    image: np.ndarray | None
    num_frames: int
    height: int
    width: int
    latent_shape: tuple[int, int, int, int]
    latents: np.ndarray | None
    seed: int
    steps: int
    shift: float
    guidance_scale: tuple[float, float]
    solver: str
    eta: float
    sampler: Any
    schedule: Schedule
    tables: dict
    batch_cfg: bool
    output_type: str
    return_trajectory: bool
    step_cache: StepCache | None
    progress: Progress


def _strings(value, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    bad = [v for v in items if not isinstance(v, str)]
    if bad or not items:
        raise InputError(f"{what}={value!r}: give a string or a non-empty list of strings")
    return tuple(items)


def _embeds(value, what: str, batch: int | None, text_len: int, text_dim: int) -> np.ndarray:
    """[B, L, text_dim] or [L, text_dim] with L <= text_len -> [B, text_len, text_dim] float32, zero-padded."""
    e = np.asarray(value, np.float32)
    if e.ndim == 2:
        e = e[None]
    if (e.ndim != 3 or e.shape[0] not in (1, batch or e.shape[0]) or e.shape[1] > text_len
            or e.shape[2] != text_dim):
        allowed = "" if batch is None else f" with B = 1 or {batch}"
        raise InputError(f"{what} has shape {tuple(np.shape(value))}; expected [B, <= {text_len}, {text_dim}]"
                         f"{allowed}")
    e = np.pad(e, ((0, 0), (0, text_len - e.shape[1]), (0, 0)))
    return np.ascontiguousarray(np.broadcast_to(e, (batch or e.shape[0], text_len, text_dim)))


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what}={value!r}: must be an integer")
    return int(value)


def make_sampler(solver: str, steps: int, shift: float, eta: float, num_train_timesteps: int):
    """(sampler, schedule): the official schedule for "unipc" / "dpm++", the shifted linear one otherwise."""
    if not isinstance(solver, str):
        raise InputError(f"solver={solver!r}: give a sampler name")
    if eta and solver != "ddim":
        raise InputError(f"eta={eta} only applies to solver='ddim'")
    if solver in OFFICIAL_SOLVERS:
        return get_sampler(solver), official_schedule(solver, steps, shift, num_train_timesteps=num_train_timesteps)
    kwargs = {"eta": eta} if solver == "ddim" else {}
    return get_sampler(solver, **kwargs), make_schedule(steps, shift=shift, num_train_timesteps=num_train_timesteps)


def validate_request(task: TaskConfig, dit_config: DiTConfig, z_dim: int, *, has_text_encoder: bool,
                     prompt: str | Sequence[str] | None = None,
                     negative_prompt: str | Sequence[str] | None = None, image=None, num_frames: int | None = None,
                     height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                     guidance_scale: float | Sequence[float] | None = None, solver: str = "unipc",
                     shift: float | None = None, eta: float = 0.0, seed: int = 0, latents=None, prompt_embeds=None,
                     negative_prompt_embeds=None, max_area: int | None = None, batch_cfg: bool = True,
                     output_type: str = "video", return_trajectory: bool = False,
                     progress: Progress = True, step_cache: StepCache | None = None) -> Request:
    """Checks a `Wan22Pipeline.__call__`'s arguments (documented there) against the pipeline's task and models.

    Args:
      task: the pipeline's TaskConfig (defaults, mode, strides); dit_config: its DiT's (text_len, text_dim).
      z_dim: the VAE's latent channels. has_text_encoder: whether prompts can be encoded (else embeds needed).
      The rest: the call's arguments.
    Returns:
      The Request. Raises InputError (before any model runs) on the first bad argument.
    """
    text_len, text_dim = dit_config.text_len, dit_config.text_dim
    # ---- text: prompts or embeddings, one per video
    if prompt is None and prompt_embeds is None:
        raise InputError("give a prompt (or prompt_embeds)")
    prompts = None
    if prompt_embeds is not None:
        pe = _embeds(prompt_embeds, "prompt_embeds", None, text_len, text_dim)
        batch = pe.shape[0]
        if prompt is not None:  # embeddings win; a prompt list still fixes the batch
            batch = len(_strings(prompt, "prompt"))
            pe = _embeds(prompt_embeds, "prompt_embeds", batch, text_len, text_dim)
    else:
        pe = None
        prompts = _strings(prompt, "prompt")
        batch = len(prompts)
    ne, negs = None, None
    if negative_prompt_embeds is not None:
        ne = _embeds(negative_prompt_embeds, "negative_prompt_embeds", batch, text_len, text_dim)
    else:
        negs = _strings(task.negative_prompt if negative_prompt is None else negative_prompt, "negative_prompt")
        negs = negs * batch if len(negs) == 1 else negs
        if len(negs) != batch:
            raise InputError(f"{len(negs)} negative prompts for {batch} prompts: give one, or one per prompt")
    if not has_text_encoder and (pe is None or ne is None):
        raise InputError("this pipeline has no tokenizer/text encoder: pass prompt_embeds and "
                         "negative_prompt_embeds")

    # ---- switches
    if image is not None and task.mode == "t2v":
        raise InputError(f"task {task.name} is text-to-video: it takes no image")
    if image is None and task.mode == "i2v":
        raise InputError(f"task {task.name} needs an image")
    if step_cache is not None and not isinstance(step_cache, StepCache):
        raise InputError(f"step_cache={step_cache!r}: give a wan22_jax.models.step_cache.StepCache or None")
    if step_cache is not None and not batch_cfg:
        raise InputError("step_cache needs batch_cfg=True (one skip decision for both CFG branches)")
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type {output_type!r}: use 'video' or 'latent'")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise InputError(f"progress={progress!r}: give True (a tqdm bar), False, or a callable (done, total)")

    # ---- sampling
    num_frames = task.frame_num if num_frames is None else num_frames
    cond.check_frames(num_frames, task.vae_stride[0])
    steps = task.sample_steps if num_inference_steps is None else num_inference_steps
    if isinstance(steps, (float, np.floating)) and float(steps).is_integer():
        steps = int(steps)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"num_inference_steps={steps}: must be >= 1")
    steps = int(steps)
    shift = task.sample_shift if shift is None else float(shift)
    scale = task.guide_scale if guidance_scale is None else guidance_scale
    scale = (float(scale), float(scale)) if np.ndim(scale) == 0 else tuple(float(s) for s in scale)
    if len(scale) != 2:
        raise InputError(f"guidance_scale {guidance_scale}: one value or (low_noise, high_noise)")
    sampler, schedule = make_sampler(solver, steps, shift, eta, task.num_train_timesteps)
    tables = {k: np.asarray(v) for k, v in sampler.tables(schedule).items()}  # raises on invalid coefficients
    seed = _int(seed, "seed")

    # ---- sizes (from the image and max_area for image tasks, as the official code) and the image itself
    multiple = task.spatial_multiple
    img = None if image is None else cond.to_image_array(image)
    area = max_area or (height * width if height and width else task.max_area)
    if img is not None and task.mode == "ti2v":
        if height and width:
            cond.check_size(width, height, multiple)
            area = height * width
        img = cond.ti2v_image(img, area, multiple)
        height, width = img.shape[:2]
    elif img is not None:  # i2v-A14B
        if not (height and width):
            height, width = cond.i2v_size(*img.shape[:2], area, task.vae_stride[1], task.patch_size[1])
        img = cond.i2v_image(img, height, width)
    else:
        width = width or task.size[0]
        height = height or task.size[1]
    cond.check_size(width, height, multiple)
    shape = cond.latent_shape(z_dim, num_frames, height, width, task.vae_stride)

    x_T = None
    if latents is not None:
        x_T = np.asarray(latents, np.float32)
        x_T = x_T[None] if x_T.ndim == 4 else x_T
        if x_T.shape[1:] != shape or x_T.shape[0] not in (1, batch):
            raise InputError(f"latents have shape {tuple(np.shape(latents))}; expected "
                             f"[{batch}, {', '.join(map(str, shape))}]")
        x_T = np.ascontiguousarray(np.broadcast_to(x_T, (batch, *shape)))

    return Request(batch=batch, prompts=prompts, negative_prompts=negs, prompt_embeds=pe,
                   negative_prompt_embeds=ne, image=img, num_frames=int(num_frames), height=int(height),
                   width=int(width), latent_shape=shape, latents=x_T, seed=seed, steps=steps, shift=shift,
                   guidance_scale=scale, solver=solver, eta=eta, sampler=sampler, schedule=schedule, tables=tables,
                   batch_cfg=bool(batch_cfg), output_type=output_type,
                   return_trajectory=bool(return_trajectory), step_cache=step_cache, progress=progress)
