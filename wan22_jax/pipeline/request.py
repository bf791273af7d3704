"""Stage 1 of a generation: the call's arguments checked and resolved into one frozen `Request`.

Every check of a `Wan22Pipeline.__call__` argument happens here, before any model runs: a bad value raises one
`InputError` naming the argument, its value and what is allowed; a legal but odd value (a size the model was not
trained at, a negative prompt that guidance <= 1 ignores) warns with `UnusualInputWarning`. Resolving includes the cheap host work that
the checks depend on (the output size from the image and max_area, the image resized to it, the sampler and its
schedule tables, whose coefficients can be invalid for some settings), so later stages take a valid request.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np

from wan22_jax import conditioning as cond
from wan22_jax.configs import TaskConfig
from wan22_jax.errors import InputError, UnusualInputWarning
from wan22_jax.models.dit import DiTConfig
from wan22_jax.models.mag_cache import MagCache, MagCalibration
from wan22_jax.models.step_cache import StepCache
from wan22_jax.pipeline.progress import Progress
from wan22_jax.samplers import get_sampler, make_schedule, official_schedule, sampler_names
from wan22_jax.samplers.presets import SAMPLER_PRESETS
from wan22_jax.samplers.schedule import Schedule

OFFICIAL_SOLVERS = ("unipc", "dpm++")
OUTPUT_TYPES = ("video", "np", "pil", "latent")
STEP_CACHES = (StepCache, MagCache, MagCalibration)
SEED_LIMIT = 2**32  # jax.random.key(seed) keeps the low 32 bits: 2**32 would repeat seed 0
# callback_on_step_end(step, t, latents): after each step, from the host; step counts from 0, t is the model
# timestep of that step, latents the [B, z, F', h, w] sample after it
StepCallback = Callable[[int, float, jax.Array], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """One checked generation call (arrays are host numpy; eq=False: compared by identity).

    Attributes:
      batch: B, videos generated (prompts x num_videos_per_prompt).
      prompts / negative_prompts: B strings each, or None where the matching embeddings are given.
      prompt_embeds / negative_prompt_embeds: [B, text_len, text_dim] float32 (zero-padded), or None.
      image: [H, W, 3] uint8 already at the output size, or None.
      num_frames, height, width: the output video; latent_shape: (z, F', h, w) of one latent.
      latents: [B, z, F', h, w] float32 explicit initial noise, or None (then drawn from `key`).
      key: the JAX PRNG key of the noise (from `seed` or the call's `key`).
      steps, shift, guidance_scale ((low_noise, high_noise)), solver, eta, seed: sampling settings.
      sampler / schedule / tables: the sampler, its schedule and `sampler.tables(schedule)` (host float64).
      batch_cfg, output_type, return_trajectory, step_cache, progress, callback: as the call's arguments.
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
    seed: int | None
    key: Any
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
    step_cache: StepCache | MagCache | MagCalibration | None  # a MagCache resolved for this run
    progress: Progress
    callback: StepCallback | None = None


def _strings(value, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple)) else None)
    if items is None or not items or any(not isinstance(v, str) for v in items):
        raise InputError(f"{what}={value!r}: give a string or a non-empty list of strings")
    return tuple(items)


def _embeds(value, what: str, batch: int | None, text_len: int, text_dim: int) -> np.ndarray:
    """[B, L, text_dim] or [L, text_dim] with L <= text_len -> [B, text_len, text_dim] float32, zero-padded."""
    try:
        e = np.asarray(value, np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} of type {type(value).__name__}: give a float array [B, L, {text_dim}]") from err
    if e.ndim == 2:
        e = e[None]
    if (e.ndim != 3 or e.shape[0] not in (1, batch or e.shape[0]) or e.shape[1] > text_len
            or e.shape[2] != text_dim):
        allowed = "" if batch is None else f" with B = 1 or {batch}"
        raise InputError(f"{what} has shape {tuple(np.shape(value))}; expected [B, <= {text_len}, {text_dim}]"
                         f"{allowed}")
    if not np.isfinite(e).all():
        raise InputError(f"{what} holds NaN or Inf values")
    e = np.pad(e, ((0, 0), (0, text_len - e.shape[1]), (0, 0)))
    return np.ascontiguousarray(np.broadcast_to(e, (batch or e.shape[0], text_len, text_dim)))


def _int(value, what: str, *, low: int | None = None, allowed: str = "") -> int:
    """An integer argument (a whole float such as 3.0 is accepted; bools are not), at least `low`."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (low is not None and value < low):
        need = allowed or ("an integer" if low is None else f"a whole number >= {low}")
        raise InputError(f"{what}={value!r}: must be {need}")
    return int(value)


def _positive(value, what: str, hint: str = "") -> float:
    """A finite float > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not np.isfinite(v) or v <= 0:
        raise InputError(f"{what}={value!r}: must be a finite number > 0{hint}")
    return v


def _guidance(value, task: TaskConfig) -> tuple[float, float]:
    """(low_noise, high_noise) scales from one value or, on a two-expert task, a pair."""
    pair = not isinstance(value, str) and np.ndim(value) == 1
    values = list(value) if pair else [value]
    if pair and len(values) == 2 and not task.two_experts:
        raise InputError(f"guidance_scale={tuple(values)}: a (low_noise, high_noise) pair needs a two-expert "
                         f"(A14B) model; task {task.name} has one DiT: give one value")
    if len(values) not in (1, 2) or (not pair and np.ndim(value) != 0):
        raise InputError(f"guidance_scale={value!r}: one value or (low_noise, high_noise)")
    scales = tuple(_positive(v, "guidance_scale", " (0 ignores the prompt and a negative scale steers away from "
                                                  "it; 1 is no guidance, the tasks use 3 to 5)") for v in values)
    return (scales[0], scales[0]) if len(scales) == 1 else scales


def _key(seed, key):
    """The noise key from `seed` (default 0) or a JAX key (typed, or raw uint32[2]); not both."""
    if seed is not None and key is not None:
        raise InputError("give seed= or key=, not both")
    if key is None:
        seed = 0 if seed is None else _int(seed, "seed", low=0, allowed="an integer in [0, 2**32)")
        if seed >= SEED_LIMIT:
            raise InputError(f"seed={seed}: must be an integer in [0, 2**32) (larger seeds repeat smaller ones)")
        return seed, jax.random.key(seed)
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return None, key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return None, jax.random.wrap_key_data(key)
    raise InputError(f"key={key!r}: give one JAX PRNG key (jax.random.key(n), or jax.random.PRNGKey(n))")


def _warn_unusual(task: TaskConfig, scale: tuple[float, float], explicit_negative: bool, size, from_image: bool):
    if explicit_negative and max(scale) <= 1:
        warnings.warn(f"guidance_scale={max(scale):g} <= 1 with a negative prompt: at 1 the negative prompt has "
                      "no effect and below 1 the video moves toward it; use a scale > 1 (the tasks use 3 to 5)",
                      UnusualInputWarning, stacklevel=4)
    trained = {tuple(s) for s in task.supported_sizes} | {tuple(task.size)}
    if not from_image and task.supported_sizes and tuple(size) not in trained:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(trained))
        warnings.warn(f"size {size[0]}x{size[1]} (WxH) is not one the {task.name} model was trained at ({listed}):"
                      " expect degraded videos", UnusualInputWarning, stacklevel=4)


def expert_starts(schedule: Schedule, task: TaskConfig) -> tuple[int, ...]:
    """The first step of each expert's run of steps: (0,) for one DiT; (0, k) for A14B, k the first step whose
    timestep is below boundary * T (the switch test of `samplers.expert_switch`), (0,) if none is."""
    if not task.two_experts:
        return (0,)
    t = schedule.node_times()[:schedule.steps]
    k = int(np.sum(t >= task.boundary * task.num_train_timesteps))
    return (0, k) if 0 < k < schedule.steps else (0,)


def _resolve_step_cache(step_cache, sampler, schedule: Schedule, task: TaskConfig):
    """A MagCache resolved for this run (ratios resampled to the steps, expert starts); others unchanged."""
    if not isinstance(step_cache, (MagCache, MagCalibration)):
        return step_cache
    if sampler.nfe(schedule.steps) != schedule.steps:
        raise InputError(f"step_cache={type(step_cache).__name__}: its ratio curve is per step, so it needs a "
                         f"sampler that evaluates the model once per step ({type(sampler).__name__} makes "
                         f"{sampler.nfe(schedule.steps)} evaluations in {schedule.steps} steps); use unipc, dpm++, "
                         "euler or ddim")
    if isinstance(step_cache, MagCalibration):
        if step_cache.steps != schedule.steps:
            raise InputError(f"MagCalibration(steps={step_cache.steps}) for a run of {schedule.steps} steps: "
                             "give the run's step count")
        return step_cache
    return step_cache.resolved(schedule.steps, expert_starts(schedule, task))


def make_sampler(solver: str, steps: int, shift: float, eta: float, num_train_timesteps: int):
    """(sampler, schedule): the official schedule for "unipc" / "dpm++", a preset's (`samplers.presets`) for a
    preset name, the shifted linear one otherwise."""
    if not isinstance(solver, str):
        raise InputError(f"solver={solver!r}: give a sampler name")
    if eta and solver != "ddim":
        raise InputError(f"eta={eta} only applies to solver='ddim'")
    if solver in OFFICIAL_SOLVERS:
        return get_sampler(solver), official_schedule(solver, steps, shift, num_train_timesteps=num_train_timesteps)
    if solver in SAMPLER_PRESETS:
        preset = SAMPLER_PRESETS[solver]
        return get_sampler(preset.sampler), preset.schedule(steps, shift, num_train_timesteps=num_train_timesteps)
    if solver not in sampler_names():
        raise InputError(f"unknown sampler {solver!r}; valid: {sampler_names()}, or a preset: "
                         f"{sorted(SAMPLER_PRESETS)}")
    kwargs = {"eta": eta} if solver == "ddim" else {}
    return get_sampler(solver, **kwargs), make_schedule(steps, shift=shift, num_train_timesteps=num_train_timesteps)


def validate_request(task: TaskConfig, dit_config: DiTConfig, z_dim: int, *, has_text_encoder: bool,
                     prompt: str | Sequence[str] | None = None,
                     negative_prompt: str | Sequence[str] | None = None, image=None, num_frames: int | None = None,
                     height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                     guidance_scale: float | Sequence[float] | None = None, solver: str = "unipc",
                     shift: float | None = None, eta: float = 0.0, seed: int | None = None, key=None,
                     num_videos_per_prompt: int = 1, latents=None, prompt_embeds=None,
                     negative_prompt_embeds=None, max_area: int | None = None, batch_cfg: bool = True,
                     output_type: str = "video", return_trajectory: bool = False,
                     progress: Progress = True, callback_on_step_end: StepCallback | None = None,
                     step_cache: StepCache | None = None, no_text_encoder_reason: str = "") -> Request:
    """Checks a `Wan22Pipeline.__call__`'s arguments (documented there) against the pipeline's task and models.

    Args:
      task: the pipeline's TaskConfig (defaults, mode, strides); dit_config: its DiT's (text_len, text_dim).
      z_dim: the VAE's latent channels. has_text_encoder: whether prompts can be encoded (else embeds needed);
      no_text_encoder_reason: why there is none (named in the error).
      The rest: the call's arguments.
    Returns:
      The Request. Raises InputError (before any model runs) on the first bad argument; warns
      (UnusualInputWarning) on legal but odd values.
    """
    text_len, text_dim = dit_config.text_len, dit_config.text_dim
    per_prompt = _int(num_videos_per_prompt, "num_videos_per_prompt", low=1)
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
        pe = np.repeat(pe, per_prompt, axis=0)
    else:
        pe = None
        prompts = tuple(p for p in _strings(prompt, "prompt") for _ in range(per_prompt))
    batch = pe.shape[0] if pe is not None else len(prompts)
    ne, negs = None, None
    if negative_prompt_embeds is not None:
        ne = _embeds(negative_prompt_embeds, "negative_prompt_embeds", batch // per_prompt, text_len, text_dim)
        ne = np.repeat(ne, per_prompt, axis=0)
    else:
        negs = _strings(task.negative_prompt if negative_prompt is None else negative_prompt, "negative_prompt")
        negs = negs * (batch // per_prompt) if len(negs) == 1 else negs
        if len(negs) != batch // per_prompt:
            raise InputError(f"{len(negs)} negative prompts for {batch // per_prompt} prompts: give one, or one "
                             "per prompt")
        negs = tuple(n for n in negs for _ in range(per_prompt))
    if not has_text_encoder and (pe is None or ne is None):
        missing = "prompt_embeds" if pe is None else "negative_prompt_embeds"
        why = no_text_encoder_reason or "this pipeline has no tokenizer/text encoder"
        raise InputError(f"{why}; without one, pass {missing} instead of text")

    # ---- switches
    if image is not None and task.mode == "t2v":
        raise InputError(f"task {task.name} is text-to-video: it takes no image")
    if image is None and task.mode == "i2v":
        raise InputError(f"task {task.name} needs an image")
    if step_cache is not None and not isinstance(step_cache, STEP_CACHES):
        raise InputError(f"step_cache={step_cache!r}: give a wan22_jax.models.step_cache.StepCache, a "
                         "wan22_jax.models.mag_cache.MagCache (or MagCalibration), or None")
    if step_cache is not None and not batch_cfg:
        raise InputError("step_cache needs batch_cfg=True (one skip decision for both CFG branches)")
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type={output_type!r}: use one of {', '.join(map(repr, OUTPUT_TYPES))}")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise InputError(f"progress={progress!r}: give True (a tqdm bar), False, or a callable (done, total)")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise InputError(f"callback_on_step_end={callback_on_step_end!r}: give a callable (step, t, latents) "
                         "or None")

    # ---- sampling
    num_frames = task.frame_num if num_frames is None else num_frames
    cond.check_frames(num_frames, task.vae_stride[0])
    preset = SAMPLER_PRESETS.get(solver) if isinstance(solver, str) else None
    if preset is not None:  # the preset's settings replace the task's defaults; explicit arguments still win
        num_inference_steps = preset.steps if num_inference_steps is None else num_inference_steps
        shift = preset.shift if shift is None else shift
        guidance_scale = preset.guidance_scale if guidance_scale is None else guidance_scale
    steps = _int(task.sample_steps if num_inference_steps is None else num_inference_steps,
                 "num_inference_steps", low=1)
    shift = task.sample_shift if shift is None else _positive(shift, "shift", " (the tasks use 3 to 12)")
    scale = (tuple(float(v) for v in task.guide_scale) if guidance_scale is None
             else _guidance(guidance_scale, task))
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.number)) or not 0 <= float(eta) <= 1:
        raise InputError(f"eta={eta!r}: must be a number in [0, 1]")
    sampler, schedule = make_sampler(solver, steps, shift, float(eta), task.num_train_timesteps)
    tables = {k: np.asarray(v) for k, v in sampler.tables(schedule).items()}  # raises on invalid coefficients
    step_cache = _resolve_step_cache(step_cache, sampler, schedule, task)
    seed, noise_key = _key(seed, key)

    # ---- sizes (from the image and max_area for image tasks, as the official code) and the image itself
    multiple = task.spatial_multiple
    height = None if height is None else _int(height, "height", low=1)
    width = None if width is None else _int(width, "width", low=1)
    if (height is None) != (width is None) and image is not None:
        raise InputError(f"height={height}, width={width}: give both or neither (with an image, neither: the "
                         "size follows the image and max_area)")
    max_area = None if max_area is None else _int(max_area, "max_area", low=multiple * multiple)
    explicit_size = height is not None and width is not None
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
    explicit_negative = negative_prompt is not None or negative_prompt_embeds is not None
    # an image's size follows its aspect ratio (as officially): only a size asked for is held to the trained ones
    _warn_unusual(task, scale, explicit_negative, (width, height), from_image=img is not None and not explicit_size)

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
                   width=int(width), latent_shape=shape, latents=x_T, seed=seed, key=noise_key, steps=steps,
                   shift=shift, guidance_scale=scale, solver=solver, eta=float(eta), sampler=sampler,
                   schedule=schedule, tables=tables, batch_cfg=bool(batch_cfg), output_type=output_type,
                   return_trajectory=bool(return_trajectory), step_cache=step_cache, progress=progress,
                   callback=callback_on_step_end)
