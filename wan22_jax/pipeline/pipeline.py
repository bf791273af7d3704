"""`Wan22Pipeline`: text/image -> video for T2V-A14B, I2V-A14B and TI2V-5B, with one sampling loop.

    pipe = Wan22Pipeline.from_pretrained("Wan2.2-TI2V-5B")          # official release folder (or ours)
    out = pipe(prompt="a red fox in the snow", num_frames=121, seed=0)
    out.videos[0].save("fox.mp4")

A call runs four stages, each a function of explicit values: `validate_request` (request.py: every argument
checked before any compute) -> `make_plan` (plan.py: the static DenoisePlan) -> `denoise` (denoise.py: the
compiled loop, progress reported from outside it) -> `decode` (the VAE). The pipeline itself is immutable:
`sharded(mesh)` and `with_vae_tiling(...)` return new pipelines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from wan22_jax import conditioning as cond
from wan22_jax.configs import TASK_FILE, TaskConfig, get_task, load_task_file, task_for_model_type
from wan22_jax.convert.dit import load_dit
from wan22_jax.convert.vae import load_vae
from wan22_jax.errors import InputError
from wan22_jax.models.dit import DiTConfig
from wan22_jax.models.vae import encode
from wan22_jax.models.vae_tiling import Tiling
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.pipeline.denoise import DenoiseInputs, denoise
from wan22_jax.pipeline.plan import make_plan
from wan22_jax.pipeline.request import Progress, Request, validate_request
from wan22_jax.sharding import make_mesh, mesh_context
from wan22_jax.sharding.loading import place_state, vae_decode
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.video import PipelineOutput, Video, to_uint8

EXPERTS = ("high_noise_model", "low_noise_model")


def decode(vae: tuple[Any, Any], latents, mesh=None, tiling: Tiling | None = None) -> jax.Array:
    """Stage 4: latents [B, z, F', h, w] -> video [B, 3, F, H, W] float in [-1, 1] (the VAE in float32).

    Args:
      vae: (graphdef, state). mesh: split the decode over it (rows and batch), or None. tiling: spatial tiles.
    """
    return vae_decode(*vae, jnp.asarray(latents, jnp.float32), mesh, tiling=tiling)


@contextlib.contextmanager
def _reporter(progress: Progress, total: int):
    """The `denoise` progress callable for the call's `progress` argument: a tqdm bar for True, None for off."""
    if progress is True:
        bar = tqdm(total=total, desc="denoising", unit="step")
        try:
            yield lambda done, total: bar.update(done - bar.n)
        finally:
            bar.close()
    else:
        yield progress or None


@dataclasses.dataclass(frozen=True, eq=False)
class Wan22Pipeline:
    """Text encoder + DiT expert(s) + VAE for one task. Build with `from_pretrained`. Immutable (frozen): the
    retargeting methods return new pipelines sharing the unchanged parts.

    Attributes:
      task: the TaskConfig (mode, boundary, sampling defaults).
      experts: {name: (graphdef, state)}: ("high_noise_model", "low_noise_model") or ("model",).
      dit_config: the DiT's config (shared by both experts).
      vae: (graphdef, state); vae_config.
      text_encoder: a TextEncoder (tokenizer + umT5 + cache), or None (then pass prompt_embeds).
      dtype: the DiT's dtype. mesh: the device mesh the DiT and VAE are sharded over, or None.
      vae_tiling: a vae_tiling.Tiling, or None (whole frames). source: the folder it was loaded from, if any.
    """

    task: TaskConfig
    experts: dict[str, tuple[Any, Any]]
    dit_config: DiTConfig
    vae: tuple[Any, Any]
    vae_config: Any
    text_encoder: TextEncoder | None = None
    dtype: Any = dataclasses.field(default=jnp.bfloat16, kw_only=True)
    mesh: Any = dataclasses.field(default=None, kw_only=True)
    vae_tiling: Tiling | None = dataclasses.field(default=None, kw_only=True)
    source: Path | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        if self.task.two_experts != (len(self.experts) == 2):
            raise InputError(f"task {self.task.name} expects {'two experts' if self.task.two_experts else 'one DiT'}"
                             f", got {sorted(self.experts)}")
        # a copy: a pipeline made by `sharded` or `with_vae_tiling` never shares the dict it was given
        object.__setattr__(self, "experts", dict(self.experts))

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
          kernels: the implementation of every matmul, attention and convolution (`wan22_jax.ops.Kernels`): XLA
            by default on every backend; `Kernels.cpu()` for the CPU kernels, `Kernels(attention="cudnn")` etc.
        """
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
        models = {name: load_dit(folder, dtype=dtype, param_dtype=dtype, mesh=mesh)
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
        experts = {name: nnx.split(with_kernels(m, kernels)) for name, m in models.items()}
        vae_model = with_kernels(load_vae(path, version=task_cfg.vae_version, dtype=jnp.float32), kernels)
        text_encoder = _load_text_encoder(path, dit_cfg.text_len, t5_dtype, kernels)
        pipe = cls(task_cfg, experts, dit_cfg, nnx.split(vae_model), vae_model.config, text_encoder, dtype=dtype,
                   source=path)
        return pipe if mesh is None else pipe.sharded(mesh)

    # ------------------------------------------------------------------------------------------ new pipelines
    def sharded(self, mesh) -> "Wan22Pipeline":
        """A new pipeline sharded over `mesh` (a Mesh or a spec such as "fsdp=4,seq=2"): DiT experts by the DiT
        rules, the VAE by the VAE rules (its decode then splits frames on rows); denoising runs under the mesh.
        The text encoder stays where it is (it runs once per prompt). This pipeline is unchanged."""
        mesh = make_mesh(mesh)
        experts = {n: (g, place_state(s, "dit", mesh)) for n, (g, s) in self.experts.items()}
        vae = (self.vae[0], place_state(self.vae[1], "vae", mesh))
        return dataclasses.replace(self, experts=experts, vae=vae, mesh=mesh)

    def with_kernels(self, kernels: Kernels) -> "Wan22Pipeline":
        """A new pipeline whose DiT experts, VAE and text encoder run their ops with `kernels`
        (`wan22_jax.ops.Kernels`); the weights are shared, this pipeline is unchanged."""
        def retarget(graphdef, state):
            return nnx.split(with_kernels(nnx.merge(graphdef, state), kernels))

        experts = {n: retarget(g, s) for n, (g, s) in self.experts.items()}
        text_encoder = None if self.text_encoder is None else self.text_encoder.with_kernels(kernels)
        return dataclasses.replace(self, experts=experts, vae=retarget(*self.vae), text_encoder=text_encoder)

    def with_vae_tiling(self, tile: int | None = 256, overlap: int = 64) -> "Wan22Pipeline":
        """A new pipeline that decodes/encodes in overlapping spatial tiles (bounded memory; not bit-exact, see
        vae_tiling); tile=None: whole frames."""
        return dataclasses.replace(self, vae_tiling=None if tile is None else Tiling(tile=tile, overlap=overlap))

    # ------------------------------------------------------------------------------------------ pieces
    def encode_prompts(self, prompts: Sequence[str]) -> jax.Array:
        """[B, text_len, text_dim] zero-padded context (cached per prompt string)."""
        if self.text_encoder is None:
            raise InputError("this pipeline has no tokenizer/text encoder: pass prompt_embeds and "
                             "negative_prompt_embeds")
        context, _ = self.text_encoder(list(prompts))
        return context

    def vae_encode(self, video) -> jax.Array:
        """[B, 3, F, H, W] float in [-1, 1] -> latents [B, z, F', h, w]."""
        return encode(*self.vae, jnp.asarray(video, jnp.float32), tiling=self.vae_tiling)

    def vae_decode(self, latents) -> jax.Array:
        """Latents [B, z, F', h, w] -> [B, 3, F, H, W] (see `decode`)."""
        return decode(self.vae, latents, self.mesh, self.vae_tiling)

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

    def _context(self, texts: tuple[str, ...] | None, embeds: np.ndarray | None) -> jax.Array:
        """The request's (already checked) embeddings, or the text encoder's for its strings."""
        if embeds is not None:
            return jnp.asarray(embeds, jnp.float32)
        return self.encode_prompts(texts).astype(jnp.float32)

    def inputs(self, request: Request) -> tuple[DenoiseInputs, jax.Array | None]:
        """The arrays of a request: (DenoiseInputs, cond_latent [z, F'', h, w] or None); runs the text encoder and
        (image tasks) the VAE encoder."""
        b, shape = request.batch, request.latent_shape
        if request.latents is not None:
            x_T = jnp.asarray(request.latents)
        else:
            x_T = jax.random.normal(jax.random.key(request.seed), (b, *shape), jnp.float32)
        context = self._context(request.prompts, request.prompt_embeds)
        context_null = self._context(request.negative_prompts, request.negative_prompt_embeds)
        y, first_latent, cond_latent = self.image_conditioning(request.image, request.num_frames, shape, b)
        return DenoiseInputs(x_T, context, context_null, y, first_latent), cond_latent

    # ------------------------------------------------------------------------------------------ generation
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 image=None, num_frames: int | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | Sequence[float] | None = None,
                 solver: str = "unipc", shift: float | None = None, eta: float = 0.0, seed: int = 0,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, max_area: int | None = None,
                 batch_cfg: bool = True, output_type: str = "video",
                 return_trajectory: bool = False, progress: Progress = True, step_cache=None) -> PipelineOutput:
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
          return_trajectory: also return the per-step samples and velocities.
          progress: True: a tqdm bar; False / None: silent; a callable: called as progress(done, total) after
            each finished step (from the host, outside the compiled loop).
          step_cache: a `wan22_jax.models.step_cache.StepCache` to skip the DiT blocks at steps whose input
            barely changed (an approximation: measure its cost); the count lands in `skipped_steps`.
        Returns:
          PipelineOutput(videos=[Video], latents=[B, z, F', h, w], trajectory=None | {"samples", "velocities"},
          skipped_steps, denoise_s).
        """
        request = validate_request(
            self.task, self.dit_config, self.vae_config.z_dim, has_text_encoder=self.text_encoder is not None,
            prompt=prompt, negative_prompt=negative_prompt, image=image, num_frames=num_frames, height=height,
            width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, solver=solver,
            shift=shift, eta=eta, seed=seed, latents=latents, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_area=max_area, batch_cfg=batch_cfg,
            output_type=output_type, return_trajectory=return_trajectory, progress=progress,
            step_cache=step_cache)
        return self.generate(request)

    def generate(self, request: Request) -> PipelineOutput:
        """Runs a checked request (from `validate_request`) through plan, denoise and decode."""
        plan = make_plan(request, self.task)
        inputs, cond_latent = self.inputs(request)
        names = EXPERTS if self.task.two_experts else ("model",)
        states = tuple(self.experts[n][1] for n in names)
        graphdef = self.experts[names[0]][0]
        key = jax.random.fold_in(jax.random.key(request.seed), 1) if plan.sampler.stochastic else None

        t0 = time.perf_counter()
        with _reporter(request.progress, request.steps) as report, mesh_context(self.mesh):
            final, aux = denoise(graphdef, plan, states, inputs, request.tables, key, progress=report)
            final = jax.block_until_ready(final)
        denoise_s = time.perf_counter() - t0
        bad = int(aux["first_nonfinite_step"])
        if bad >= 0:
            raise FloatingPointError(f"NaN or Inf in the latents at denoising step {bad} (of {request.steps}); "
                                     "check the weights' dtype and the inputs")
        caches = aux.get("model_state")
        trajectory = ({k: np.asarray(aux[k]) for k in ("samples", "velocities")} if plan.return_trajectory
                      else None)
        extra = dict(latents=np.asarray(final), trajectory=trajectory, timesteps=request.schedule.timesteps,
                     cond_latent=None if cond_latent is None else np.asarray(cond_latent),
                     skipped_steps=None if caches is None else sum(int(c["skipped"]) for c in caches),
                     denoise_s=denoise_s)
        if request.output_type == "latent":
            return PipelineOutput(videos=[], **extra)
        video = np.asarray(self.vae_decode(final))
        return PipelineOutput(videos=[Video(to_uint8(v), fps=self.task.fps) for v in video], video=video, **extra)


def _load_text_encoder(path: Path, text_len: int, dtype, kernels: Kernels) -> TextEncoder | None:
    """The release's text encoder and tokenizer, or None when the folder has no tokenizer files."""
    tokenizer_dir = path / "google" / "umt5-xxl"
    if not tokenizer_dir.is_dir():
        return None
    return TextEncoder.from_pretrained(path, text_len=text_len, dtype=dtype, param_dtype=dtype,
                                       kernels=kernels, tokenizer_path=tokenizer_dir)


def default_checkpoint() -> Path:
    """The embedded default model: the mini-world model shipped in the package (wan22_jax/assets/mini_world/,
    built by experiments/mini_world/build_default.py), laid out like an official release folder."""
    path = Path(__file__).parent.parent / "assets" / "mini_world"
    if not path.is_dir():
        raise InputError(f"no checkpoint given and the embedded default model is missing ({path}); reinstall the "
                         "package, rebuild it with experiments/mini_world/build_default.py, or pass a checkpoint")
    return path
