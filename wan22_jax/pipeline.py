"""`Wan22Pipeline`: text/image -> video for T2V-A14B, I2V-A14B and TI2V-5B, with one sampling loop.

    pipe = Wan22Pipeline.from_pretrained("Wan2.2-TI2V-5B")          # official release folder (or ours)
    out = pipe(prompt="a red fox in the snow", num_frames=121, seed=0)
    out.videos[0].save("fox.mp4")

The task-specific parts (sizes, image conditioning, per-frame timesteps) are small functions in conditioning.py;
the denoising loop is one jitted function (`_denoise`): text K/V computed once per generation, classifier-free
guidance and the A14B expert switch as pure functions of t inside one `lax.scan` over the steps.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax import conditioning as cond
from wan22_jax.configs import TASK_FILE, TaskConfig, get_task, load_task_file, task_for_model_type
from wan22_jax.errors import InputError
from wan22_jax.models.dit import DiTConfig
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.samplers import ClassifierFreeGuidance, expert_switch, get_sampler, official_schedule
from wan22_jax.samplers.loop import run_scan
from wan22_jax.samplers.schedule import make_schedule
from wan22_jax.video import PipelineOutput, Video, to_uint8

EXPERTS = ("high_noise_model", "low_noise_model")
OFFICIAL_SOLVERS = ("unipc", "dpm++")


@dataclasses.dataclass(frozen=True)
class DenoisePlan:
    """Everything static about one denoising run (hashable: a jit cache key)."""

    sampler: Any
    guidance: ClassifierFreeGuidance
    two_experts: bool
    boundary: float | None
    num_train_timesteps: int
    frame_mask: tuple[float, ...] | None  # per-latent-frame multiplier of t (ti2v image mode)
    reinject_first_frame: bool
    batch_cfg: bool
    return_trajectory: bool
    check_finite: bool
    step_cache: Any = None  # a models.step_cache.StepCache, or None


def _model_time(t, plan: DenoisePlan, batch: int):
    """The timestep layout the DiT gets: [B] for scalar t, [B, F'] when some frames are clean (ti2v)."""
    if plan.frame_mask is None:
        return jnp.broadcast_to(t, (batch,))
    return jnp.broadcast_to(t * jnp.asarray(plan.frame_mask, jnp.float32), (batch, len(plan.frame_mask)))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _denoise(graphdef, plan: DenoisePlan, states, x_T, context, context_null, y, first_latent, tables, key):
    """The whole sampling loop, compiled once per (shapes, plan).

    states: one DiT state per expert, (high_noise, low_noise) or (single,).
    x_T: [B, z, F', h, w] initial latents; context / context_null: [B, text_len, text_dim] (zero-padded).
    y: [B, C_y, F', h, w] channel conditioning (i2v) or None; first_latent: [B, z, 1, h, w] (ti2v image) or None.
    tables: the sampler's per-step arrays (host-computed from the schedule).
    """
    b = x_T.shape[0]
    cache = plan.step_cache

    def expert(state, slot=0):
        model = nnx.merge(graphdef, state)
        # K/V of the text for every layer, once per generation (cond and uncond stacked on the batch axis)
        kv = model.encode_context(jnp.concatenate([context, context_null]))

        def cached_velocity(x, t, i, caches):
            # both CFG branches in one batch, so one skip decision covers them; each expert has its own slot
            tt = _model_time(t, plan, b)
            xm = x.astype(jnp.float32)
            out, c = cache.forward(model, caches[slot], jnp.concatenate([xm, xm]), jnp.concatenate([tt, tt]),
                                   context_kv=kv, y=None if y is None else jnp.concatenate([y, y]))
            caches = tuple(c if k == slot else old for k, old in enumerate(caches))
            return (out[:b], out[b:]), caches

        def velocity(x, t, i):
            tt = _model_time(t, plan, b)
            xm = x.astype(jnp.float32)
            if plan.batch_cfg:
                out = model(jnp.concatenate([xm, xm]), jnp.concatenate([tt, tt]), context_kv=kv,
                            y=None if y is None else jnp.concatenate([y, y]))
                return out[:b], out[b:]
            kv_c = tuple(a[:, :b] for a in kv)
            kv_u = tuple(a[:, b:] for a in kv)
            return (model(xm, tt, context_kv=kv_c, y=y),
                    model(xm, tt, context_kv=kv_u, y=y))

        return cached_velocity if cache is not None else velocity

    if plan.two_experts:
        velocity_fn = expert_switch(expert(states[0], 0), expert(states[1], 1), boundary=plan.boundary,
                                    num_train_timesteps=plan.num_train_timesteps)
    else:
        velocity_fn = expert(states[0])
    model_state = None
    if cache is not None:
        model0 = nnx.merge(graphdef, states[0])
        x2 = jnp.concatenate([x_T, x_T]).astype(jnp.float32)
        t2 = _model_time(jnp.float32(0), plan, 2 * b)
        # shapes only: init traces prepare (text K/V included) under eval_shape, nothing runs twice
        empty = cache.init(model0, x2, t2, context=jnp.concatenate([context, context_null]),
                           y=None if y is None else jnp.concatenate([y, y]))
        model_state = (empty,) * len(states)

    post_step = None
    if plan.reinject_first_frame:
        def post_step(x):
            # official: latent = (1 - mask) * z + mask * latent, i.e. frame 0 becomes the image latent again
            return x.at[:, :, :1].set(first_latent.astype(x.dtype))
        x_T = post_step(x_T)
    return run_scan(plan.sampler, velocity_fn, x_T, tables, guidance=plan.guidance, key=key,
                    return_trajectory=plan.return_trajectory, post_step=post_step,
                    check_finite=plan.check_finite, model_state=model_state)


class Wan22Pipeline:
    """Text encoder + DiT expert(s) + VAE for one task. Build with `from_pretrained`.

    Attributes:
      task: the TaskConfig (mode, boundary, sampling defaults).
      dit_config: the DiT's config (shared by both experts).
      experts: {name: (graphdef, state)}: ("high_noise_model", "low_noise_model") or ("model",).
      vae: (graphdef, state); vae_config.
      text_encoder: a TextEncoder (tokenizer + umT5 + cache), or None (then pass prompt_embeds).
    """

    def __init__(self, task: TaskConfig, experts: dict[str, tuple[Any, Any]], dit_config: DiTConfig, vae,
                 vae_config, text_encoder=None, *, dtype=jnp.bfloat16):
        self.task = task
        self.experts = experts
        self.dit_config = dit_config
        self.vae = vae
        self.vae_config = vae_config
        self.text_encoder = text_encoder
        self.dtype = dtype
        self.vae_tiling = None
        self.mesh = None  # set by wan22_jax.sharding.shard_pipeline / from_pretrained(mesh=...)
        if task.two_experts != (len(experts) == 2):
            raise InputError(f"task {task.name} expects {'two experts' if task.two_experts else 'one DiT'}, "
                             f"got {sorted(experts)}")

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, task: str | None = None,
                        dtype: Any = None, t5_dtype: Any = None, mesh=None,
                        kernels: Kernels = XLA) -> "Wan22Pipeline":
        """Loads an official release folder (by its file names), a Diffusers-layout DiT folder plus VAE/T5
        files, or our converted folder (`wan22 convert`).

        Args:
          path: the folder; None loads the embedded default model (see `default_checkpoint`).
          task: "t2v-A14B", "i2v-A14B" or "ti2v-5B"; by default the folder's task.json if it has one, else
            inferred from the DiT's model_type and experts.
          dtype: DiT compute/param dtype; None: the task's (bf16 for releases, as the official
            --convert_model_dtype runs; fp32 for parity or the mini-world model).
          t5_dtype: text encoder dtype; None: as `dtype` (official: bf16). The VAE always runs in fp32
            (official autocast fp32).
          mesh: a jax.sharding.Mesh or a spec such as "fsdp=4,seq=2" (`wan22_jax.sharding`): the DiT experts load
            straight onto their shards and denoising runs sharded; None: one device.
        """
        from wan22_jax.convert.dit import load_dit
        from wan22_jax.sharding import make_mesh
        from wan22_jax.sharding.loading import shard_pipeline
        from wan22_jax.convert.vae import load_vae

        if path is None:
            path = default_checkpoint()
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: checkpoint folder not found")
        names = [e for e in EXPERTS if (path / e).is_dir()]
        if names and len(names) != 2:
            raise InputError(f"{path}: found {names} but an A14B checkpoint needs both {EXPERTS}")
        folders = {e: path / e for e in names} or {"model": path}
        mesh = None if mesh is None else make_mesh(mesh)
        own_task = load_task_file(path / TASK_FILE) if (path / TASK_FILE).is_file() else None
        if dtype is None:
            dtype = jnp.float32 if own_task is not None and own_task.dtype == "float32" else jnp.bfloat16
        t5_dtype = dtype if t5_dtype is None else t5_dtype
        models = {name: with_kernels(load_dit(folder, dtype=dtype, param_dtype=dtype, mesh=mesh), kernels)
                  for name, folder in folders.items()}
        dit_cfg = next(iter(models.values())).cfg
        if task:
            task_cfg = get_task(task)
        elif own_task is not None:
            task_cfg = own_task
            if task_cfg.two_experts != (len(models) == 2):
                raise InputError(f"{path / TASK_FILE}: two_experts={task_cfg.two_experts} but the folder has "
                                 f"{len(models)} DiT(s)")
        else:
            task_cfg = task_for_model_type(dit_cfg.model_type, len(models) == 2)
        experts = {name: nnx.split(m) for name, m in models.items()}
        vae_model = with_kernels(load_vae(path, version=task_cfg.vae_version, dtype=jnp.float32), kernels)
        text_encoder = _load_text_encoder(path, dit_cfg.text_len, t5_dtype, kernels)
        pipe = cls(task_cfg, experts, dit_cfg, nnx.split(vae_model), vae_model.config, text_encoder, dtype=dtype)
        pipe.source = path
        return pipe if mesh is None else shard_pipeline(pipe, mesh)

    def enable_vae_tiling(self, tile: int = 256, overlap: int = 64) -> None:
        """Decode/encode in overlapping spatial tiles (bounded memory; not bit-exact, see vae_tiling)."""
        from wan22_jax.models.vae_tiling import Tiling
        self.vae_tiling = Tiling(tile=tile, overlap=overlap)

    def disable_vae_tiling(self) -> None:
        self.vae_tiling = None

    # ------------------------------------------------------------------------------------------ pieces
    def encode_prompts(self, prompts: Sequence[str]) -> jax.Array:
        """[B, text_len, text_dim] zero-padded context (cached per prompt string)."""
        if self.text_encoder is None:
            raise InputError("this pipeline has no tokenizer/text encoder: pass prompt_embeds and "
                             "negative_prompt_embeds")
        context, _ = self.text_encoder(list(prompts))
        return context

    def vae_encode(self, video) -> jax.Array:
        from wan22_jax.models.vae import encode
        return encode(*self.vae, jnp.asarray(video, jnp.float32), tiling=self.vae_tiling)

    def vae_decode(self, latents) -> jax.Array:
        from wan22_jax.sharding.loading import vae_decode
        return vae_decode(*self.vae, jnp.asarray(latents, jnp.float32), self.mesh, tiling=self.vae_tiling)

    def image_conditioning(self, img: np.ndarray | None, num_frames: int, shape: tuple[int, ...], batch: int):
        """(y, first_latent, cond_latent) for an image already at the target size ([H, W, 3] uint8).

        i2v-A14B: y = [4-channel first-frame mask; VAE latent of the image followed by F-1 black frames]
        ([B, 4 + z, F', h, w]). ti2v: first_latent = VAE latent of the image alone ([B, z, 1, h, w]), which
        replaces latent frame 0 before the first step and after every step. cond_latent: the VAE output.
        """
        if img is None:
            return None, None, None
        height, width = img.shape[:2]
        pixels = cond.normalize_image(img)  # [3, H, W]
        if self.task.mode == "i2v":
            video = np.concatenate([pixels[:, None], np.zeros((3, num_frames - 1, height, width), np.float32)], 1)
            lat = self.vae_encode(video[None])  # [1, z, F', h, w]
            y = jnp.concatenate([jnp.asarray(cond.i2v_mask(*shape[1:]))[None], lat], axis=1)
            return jnp.broadcast_to(y, (batch, *y.shape[1:])), None, lat[0]
        lat = self.vae_encode(pixels[None, :, None])  # [1, z, 1, h, w]
        return None, jnp.broadcast_to(lat, (batch, *lat.shape[1:])), lat[0]

    def _context(self, prompts, embeds, what: str, batch: int) -> jax.Array:
        text_len, text_dim = self.dit_config.text_len, self.dit_config.text_dim
        if embeds is not None:
            e = jnp.asarray(embeds, jnp.float32)
            if e.ndim == 2:
                e = e[None]
            if e.ndim != 3 or e.shape[0] not in (1, batch) or e.shape[1] > text_len or e.shape[2] != text_dim:
                raise InputError(f"{what}_embeds has shape {tuple(e.shape)}; expected [B, <= {text_len}, "
                                 f"{text_dim}] with B = 1 or {batch}")
            e = jnp.pad(e, ((0, 0), (0, text_len - e.shape[1]), (0, 0)))
            return jnp.broadcast_to(e, (batch, text_len, text_dim))
        return self.encode_prompts(prompts).astype(jnp.float32)

    # ------------------------------------------------------------------------------------------ generation
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 image=None, num_frames: int | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | Sequence[float] | None = None,
                 solver: str = "unipc", shift: float | None = None, eta: float = 0.0, seed: int = 0,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, max_area: int | None = None,
                 batch_cfg: bool = True, output_type: str = "video",
                 return_trajectory: bool = False, progress: bool = True, step_cache=None) -> PipelineOutput:
        """Generates one video per prompt.

        Args:
          prompt: a prompt or a list (one video each); negative_prompt: None uses the official default.
          image: first frame for i2v-A14B / ti2v-5B (PIL image or [H, W, 3] array); an error for t2v tasks.
          num_frames: 1 + 4k (task default: 81 or 121). height, width: pixels (task default; for image tasks
            the size follows the image and max_area as the official code, unless both are given).
          num_inference_steps, guidance_scale, shift: task defaults when None; guidance_scale may be
            (low_noise, high_noise) for A14B.
          solver: "unipc" or "dpm++" (official schedules), or any name of `wan22_jax.samplers.sampler_names()`
            (on the shifted linear schedule). eta: noise re-injection of the stochastic "ddim" sampler.
          seed: the initial noise is jax.random.normal(key(seed)) (torch's RNG cannot be reproduced).
          latents: explicit initial noise [B, z, F', h, w] (or [z, F', h, w]) instead of the seed's.
          prompt_embeds / negative_prompt_embeds: [B, L, text_dim] text-encoder outputs (trimmed or zero-padded)
            instead of prompts.
          output_type: "video" decodes; "latent" stops after denoising.
          step_cache: a `wan22_jax.models.step_cache.StepCache` to skip the DiT blocks at steps whose input
            barely changed (an approximation: measure its cost); the count lands in `skipped_steps`.
        Returns:
          PipelineOutput(videos=[Video], latents=[B, z, F', h, w], trajectory=None | {"samples", "velocities"}).
        """
        task = self.task
        # ---- validate everything before any compute
        if prompt is None and prompt_embeds is None:
            raise InputError("give a prompt (or prompt_embeds)")
        prompts = [prompt] if isinstance(prompt, str) else (list(prompt) if prompt is not None else None)
        batch = len(prompts) if prompts is not None else int(np.asarray(prompt_embeds).shape[0]
                                                             if np.asarray(prompt_embeds).ndim == 3 else 1)
        if negative_prompt is None:
            negative_prompt = task.negative_prompt
        negs = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) != batch:
            raise InputError(f"{len(negs)} negative prompts for {batch} prompts")
        if image is not None and task.mode == "t2v":
            raise InputError(f"task {task.name} is text-to-video: it takes no image")
        if image is None and task.mode == "i2v":
            raise InputError(f"task {task.name} needs an image")
        if step_cache is not None and not batch_cfg:
            raise InputError("step_cache needs batch_cfg=True (one skip decision for both CFG branches)")
        if output_type not in ("video", "latent"):
            raise InputError(f"output_type {output_type!r}: use 'video' or 'latent'")
        num_frames = task.frame_num if num_frames is None else num_frames
        cond.check_frames(num_frames, task.vae_stride[0])
        steps = task.sample_steps if num_inference_steps is None else int(num_inference_steps)
        if steps < 1:
            raise InputError(f"num_inference_steps={steps}: must be >= 1")
        shift = task.sample_shift if shift is None else float(shift)
        scale = task.guide_scale if guidance_scale is None else guidance_scale
        scale = (float(scale), float(scale)) if np.ndim(scale) == 0 else tuple(float(s) for s in scale)
        if len(scale) != 2:
            raise InputError(f"guidance_scale {guidance_scale}: one value or (low_noise, high_noise)")
        sampler, schedule = self._sampler(solver, steps, shift, eta)
        multiple = task.spatial_multiple

        # ---- sizes and image conditioning
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
        z_dim = self.vae_config.z_dim
        shape = cond.latent_shape(z_dim, num_frames, height, width, task.vae_stride)

        if latents is not None:
            x_T = jnp.asarray(latents, jnp.float32)
            x_T = x_T[None] if x_T.ndim == 4 else x_T
            if x_T.shape[1:] != shape or x_T.shape[0] not in (1, batch):
                raise InputError(f"latents have shape {tuple(x_T.shape)}; expected [{batch}, {', '.join(map(str, shape))}]")
            x_T = jnp.broadcast_to(x_T, (batch, *shape))
        else:
            x_T = jax.random.normal(jax.random.key(seed), (batch, *shape), jnp.float32)

        context = self._context(prompts, prompt_embeds, "prompt", batch)
        context_null = self._context(negs, negative_prompt_embeds, "negative_prompt", batch)

        y, first_latent, cond_latent = self.image_conditioning(img, num_frames, shape, batch)
        frame_mask = cond.frame_timestep_mask(task, shape[1], img is not None)

        plan = DenoisePlan(
            sampler=sampler,
            guidance=ClassifierFreeGuidance(scale=scale if task.two_experts else scale[1],
                                            boundary=task.boundary if task.two_experts else None,
                                            num_train_timesteps=task.num_train_timesteps),
            two_experts=task.two_experts, boundary=task.boundary, num_train_timesteps=task.num_train_timesteps,
            frame_mask=None if frame_mask is None else tuple(float(v) for v in frame_mask),
            reinject_first_frame=first_latent is not None, batch_cfg=batch_cfg,
            return_trajectory=return_trajectory, check_finite=True, step_cache=step_cache)
        states = tuple(self.experts[n][1] for n in (EXPERTS if task.two_experts else ("model",)))
        graphdef = next(iter(self.experts.values()))[0]
        tables = {k: np.asarray(v) for k, v in sampler.tables(schedule).items()}
        key = jax.random.fold_in(jax.random.key(seed), 1) if sampler.stochastic else None

        t0 = time.perf_counter()
        from wan22_jax.sharding import mesh_context
        with _progress(steps, progress), mesh_context(self.mesh):
            final, aux = _denoise(graphdef, plan, states, x_T, context, context_null, y, first_latent, tables, key)
            final = jax.block_until_ready(final)
        self.last_denoise_s = time.perf_counter() - t0
        bad = int(aux.pop("first_nonfinite_step"))
        if bad >= 0:
            raise FloatingPointError(f"NaN or Inf in the latents at denoising step {bad} (of {steps}); check the "
                                     "weights' dtype and the inputs")
        caches = aux.pop("model_state", None)
        trajectory = {k: np.asarray(v) for k, v in aux.items()} if return_trajectory else None
        extra = dict(latents=np.asarray(final), trajectory=trajectory, timesteps=schedule.timesteps,
                     cond_latent=None if cond_latent is None else np.asarray(cond_latent),
                     skipped_steps=None if caches is None else sum(int(c["skipped"]) for c in caches))
        if output_type == "latent":
            return PipelineOutput(videos=[], **extra)
        video = np.asarray(self.vae_decode(final))
        return PipelineOutput(videos=[Video(to_uint8(v), fps=task.fps) for v in video], video=video, **extra)

    def _sampler(self, solver: str, steps: int, shift: float, eta: float):
        if eta and solver != "ddim":
            raise InputError(f"eta={eta} only applies to solver='ddim'")
        if solver in OFFICIAL_SOLVERS:
            sched = official_schedule(solver, steps, shift, num_train_timesteps=self.task.num_train_timesteps)
            return get_sampler(solver), sched
        kwargs = {"eta": eta} if solver == "ddim" else {}
        return get_sampler(solver, **kwargs), make_schedule(steps, shift=shift,
                                                             num_train_timesteps=self.task.num_train_timesteps)


def _load_text_encoder(path: Path, text_len: int, dtype, kernels):
    """The release's text encoder and tokenizer, or None when the folder has no tokenizer files."""
    from wan22_jax.text_encoder import TextEncoder
    tokenizer_dir = path / "google" / "umt5-xxl"
    if not tokenizer_dir.is_dir():
        return None
    return TextEncoder.from_pretrained(path, text_len=text_len, dtype=dtype, param_dtype=dtype,
                                       kernels=kernels, tokenizer_path=tokenizer_dir)


class _progress:
    """A tqdm bar over denoising steps, advanced from inside the compiled scan (see samplers.loop)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled

    def __enter__(self):
        from wan22_jax.samplers import loop
        if self.enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, desc="denoising", unit="step")
            loop.set_progress(self.bar.update)
        return self

    def __exit__(self, *exc):
        from wan22_jax.samplers import loop
        if self.enabled:
            loop.set_progress(None)
            self.bar.close()


def default_checkpoint() -> Path:
    """The embedded default model: the mini-world model shipped in the package (wan22_jax/assets/mini_world/,
    built by experiments/mini_world/build_default.py), laid out like an official release folder."""
    path = Path(__file__).parent / "assets" / "mini_world"
    if not path.is_dir():
        raise InputError(f"no checkpoint given and the embedded default model is missing ({path}); reinstall the "
                         "package, rebuild it with experiments/mini_world/build_default.py, or pass a checkpoint")
    return path
