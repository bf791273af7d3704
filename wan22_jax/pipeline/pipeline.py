"""`Wan22Pipeline`: text/image -> video for T2V-A14B, I2V-A14B and TI2V-5B, with one sampling loop.

    pipe = Wan22Pipeline.from_pretrained("Wan2.2-TI2V-5B")          # official release folder (or ours)
    out = pipe(prompt="a red fox in the snow", num_frames=121, seed=0)
    out.videos[0].save("fox.mp4")

A call runs four stages, each a function of explicit values: `validate_request` (request.py: every argument
checked before any compute) -> `make_plan` (plan.py: the static DenoisePlan) -> `denoise` (denoise.py: the
compiled loop, progress reported from outside it) -> `decode` (the VAE). The pipeline itself is immutable:
`sharded(mesh)`, `with_vae_tiling(...)`, `load_lora(...)` and `quantized(...)` return new pipelines.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax import conditioning as cond
from wan22_jax.configs import TASK_FILE, TaskConfig, dtype_name, get_task, load_task_file, task_for_model_type
from wan22_jax.convert.dit import load_dit
from wan22_jax.convert.vae import load_vae
from wan22_jax.errors import InputError, InputFileError, UnknownTokenWarning
from wan22_jax.lora.apply import expert_names, merge_into_experts
from wan22_jax.lora.load import LoraWeights, read_lora
from wan22_jax.lora.unmerged import build_expert_loras, check_strength, strength_table
from wan22_jax.models.dit import DiTConfig
from wan22_jax.models.vae import encode
from wan22_jax.models.vae_tiling import Tiling
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.ops.quant import check_mode, is_quantized, quantize_module
from wan22_jax.pipeline.animate_pipeline import ANIMATE_TASK, AnimatePipeline, is_animate_folder
from wan22_jax.pipeline.denoise import DenoiseInputs, denoise, program_memory
from wan22_jax.pipeline.files import (EXPERTS, check_json_files, default_checkpoint, load_text_encoder,
                                      save_pipeline)
from wan22_jax.pipeline.memory import lower_bound, refuse_if_too_big
from wan22_jax.pipeline.plan import DenoisePlan, make_plan
from wan22_jax.pipeline.progress import Progress, stage, step_reporter
from wan22_jax.pipeline.request import Request, StepCallback, validate_request
from wan22_jax.pipeline.s2v import TASK as S2V_TASK
from wan22_jax.pipeline.s2v import S2VPipeline, is_s2v_folder
from wan22_jax.sharding import make_mesh, mesh_context
from wan22_jax.sharding.loading import place_state, vae_decode
from wan22_jax.state import flat_state
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.video import PipelineOutput, Video, as_output, to_uint8

JNP_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


def decode(vae: tuple[Any, Any], latents, mesh=None, tiling: Tiling | None = None) -> jax.Array:
    """Stage 4: latents [B, z, F', h, w] -> video [B, 3, F, H, W] float in [-1, 1] (the VAE in float32).

    Args:
      vae: (graphdef, state). mesh: split the decode over it (rows and batch), or None. tiling: spatial tiles.
    """
    return vae_decode(*vae, jnp.asarray(latents, jnp.float32), mesh, tiling=tiling)


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
      no_text_encoder_reason: without a text encoder, why (the missing tokenizer folder), named in errors.
      unmerged_loras: LoRAs applied inside the loop (`load_lora(merge=False)`): (LoraWeights, strength, expert
        names) each, the strength a number, a per-step sequence or a function of the step index.
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
    no_text_encoder_reason: str = dataclasses.field(default="", kw_only=True)
    unmerged_loras: tuple = dataclasses.field(default=(), kw_only=True)
    # compiled VAE decoders per latent shape (`_decoder`); not an init field: a derived pipeline starts empty
    _decoders: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

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
                        kernels: Kernels = XLA, progress: bool = True) -> "Wan22Pipeline":
        """Loads an official release folder (by its file names), a Diffusers-layout DiT folder plus VAE/T5
        files, or our converted folder (`wan22 convert`, `save_pretrained`).

        Args:
          path: the folder; None loads the embedded default model (see `default_checkpoint`).
          task: "t2v-A14B", "i2v-A14B", "ti2v-5B" or "s2v-14B"; by default the folder's task.json if it has
            one, else inferred from the DiT's model_type and experts (an S2V folder by its config.json).
          dtype: DiT compute/param dtype: "bf16" / "bfloat16" / jnp.bfloat16 or "fp32" / "float32" /
            jnp.float32 (the CLI's --dtype spellings); None: the task's (bf16 for releases, as the official
            --convert_model_dtype runs; fp32 for parity or the mini-world model).
          t5_dtype: text encoder dtype, same spellings; None: as `dtype` (official: bf16). The VAE always runs
            in fp32 (official autocast fp32).
          mesh: a jax.sharding.Mesh or a spec such as "fsdp=4,seq=2" (`wan22_jax.sharding`): the DiT experts load
            straight onto their shards and denoising runs sharded; None: one device.
          kernels: the implementation of every matmul, attention and convolution (`wan22_jax.ops.Kernels`): XLA
            by default on every backend; `Kernels.cpu()` for the CPU kernels, `Kernels(attention="cudnn")` etc.
          progress: a status bar while the components load.
        Returns:
          The pipeline. Raises InputError (a bad argument), InputFileError (no such folder),
          CheckpointFormatError (a corrupt or truncated file, named) or WeightMappingError (a tensor).
          An S2V-14B folder (or task="s2v-14B") gives an `S2VPipeline` (pipeline/s2v.py).
          An Animate-14B folder (or task="animate-14B") gives an `AnimatePipeline` (pipeline/animate_pipeline.py).
        """
        if task == ANIMATE_TASK or (task is None and is_animate_folder(path)):
            return AnimatePipeline.from_pretrained(path, dtype=dtype, t5_dtype=t5_dtype, mesh=mesh, kernels=kernels,
                                                   progress=progress)
        if task == S2V_TASK or is_s2v_folder(path):  # S2V-14B: its own pipeline (pipeline/s2v.py)
            return S2VPipeline.from_pretrained(path, task=task, dtype=dtype, t5_dtype=t5_dtype, mesh=mesh,
                                               kernels=kernels, progress=progress)
        dtype = None if dtype is None else dtype_name(dtype, "dtype")
        t5_dtype = None if t5_dtype is None else dtype_name(t5_dtype, "t5_dtype")
        task_cfg = None if task is None else get_task(task)
        if path is None:
            path = default_checkpoint()
        path = Path(path)
        if not path.is_dir():
            raise InputFileError(f"{path}: checkpoint folder not found")
        check_json_files(path)
        names = [e for e in EXPERTS if (path / e).is_dir()]
        if names and len(names) != 2:
            raise InputError(f"{path}: found {names} but an A14B checkpoint needs both {EXPERTS}")
        folders = {e: path / e for e in names} or {"model": path}
        mesh = None if mesh is None else make_mesh(mesh)
        own_task = load_task_file(path / TASK_FILE) if (path / TASK_FILE).is_file() else None
        if dtype is None:
            dtype = "float32" if own_task is not None and own_task.dtype == "float32" else "bfloat16"
        dtype, t5_dtype = JNP_DTYPES[dtype], JNP_DTYPES[t5_dtype or dtype]
        with stage(f"loading {path.name}", progress, total=len(folders) + 2) as bar:
            models = {}
            for name, folder in folders.items():
                models[name] = load_dit(folder, dtype=dtype, param_dtype=dtype, mesh=mesh)
                bar.update(1)
            dit_cfg = next(iter(models.values())).cfg
            if task_cfg is None and own_task is not None:
                task_cfg = own_task
                if task_cfg.two_experts != (len(models) == 2):
                    raise InputError(f"{path / TASK_FILE}: two_experts={task_cfg.two_experts} but the folder has "
                                     f"{len(models)} DiT(s)")
            elif task_cfg is None:
                task_cfg = task_for_model_type(dit_cfg.model_type, len(models) == 2)
            experts = {name: nnx.split(with_kernels(m, kernels)) for name, m in models.items()}
            vae_model = with_kernels(load_vae(path, version=task_cfg.vae_version, dtype=jnp.float32), kernels)
            bar.update(1)
            text_encoder, why = load_text_encoder(path, dit_cfg.text_len, t5_dtype, kernels)
            bar.update(1)
        pipe = cls(task_cfg, experts, dit_cfg, nnx.split(vae_model), vae_model.config, text_encoder, dtype=dtype,
                   source=path, no_text_encoder_reason=why)
        return pipe if mesh is None else pipe.sharded(mesh)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Writes this pipeline in our converted format (what `wan22 convert` writes), atomically: a new folder
        that `from_pretrained(path)` loads back with the same task, sampling defaults and dtype.

        Args:
          path: a folder that does not exist yet.
        Returns:
          The folder written.
        Raises:
          InputError: the pipeline is quantised (`quantized`): the checkpoint formats hold full-precision weights;
            save the pipeline before quantising and quantise after loading.
        """
        if any(is_quantized(s) for _, s in self.experts.values()):
            raise InputError("save_pretrained: this pipeline holds quantised weights, which the checkpoint formats "
                             "do not store; save the unquantised pipeline and call quantized() after loading")
        if self.unmerged_loras:
            raise InputError("save_pretrained: this pipeline applies unmerged LoRAs, which the checkpoint does not "
                             "store; load them with merge=True to save the merged weights")
        return save_pipeline(self, path)

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

    def load_lora(self, path: "str | os.PathLike | LoraWeights", strength: Any = 1.0, expert: str | None = None,
                  merge: bool = True, strict: bool = True) -> "Wan22Pipeline":
        """A new pipeline with a LoRA merged into its DiT expert(s), or applied unmerged inside the sampling loop;
        this pipeline is unchanged. Chain calls for several LoRAs (each with its strength; on A14B each expert its
        own files and strengths).

        Args:
          path: a LoRA safetensors file in any known format (diffusers/PEFT, ComfyUI and LightX2V, musubi/kohya,
            `wan22 train`'s; see `wan22_jax.lora.formats`), or LoraWeights from `wan22_jax.lora.read_lora`.
          strength: multiplies the update (1.0: as trained; 0: no change). Unmerged, also a per-step schedule: a
            sequence of one strength per step (its length must be the generation's step count) or a function
            of the step index (from 0) returning the strength. expert: None (every expert), or "high" / "low"
            for one expert of an A14B pipeline.
          merge: True merges into the weights (no cost per step). False keeps the base weights and applies the
            LoRA inside every step as x @ W + s * (x @ A) @ B (`wan22_jax.lora.unmerged`; full-size differences
            are added per step), at the step's strength.
          strict: a key that matches no parameter of this DiT is an error (False: a warning, skipped).
        Returns:
          The new pipeline. Raises, before any weight changes: InputError (a bad argument), InputFileError (no
          such file), CheckpointFormatError (not safetensors), WeightMappingError (unknown key or format,
          unpaired factor, shape mismatch with this DiT).
        """
        names = expert_names(self.experts, expert)
        if any(is_quantized(s) for _, s in self.experts.values()):
            raise InputError("load_lora on a quantised pipeline: merge LoRAs first, then call quantized(...)")
        if merge and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                      or not np.isfinite(strength)):
            raise InputError(f"strength={strength!r}: expected a finite number (a per-step schedule needs "
                             "merge=False)")
        if not merge:
            strength = check_strength(strength)
        if isinstance(path, LoraWeights):
            weights = path
            if weights.dit_config != self.dit_config:
                raise InputError(f"LoRA {weights.source} was read for another DiT config; read it with this "
                                 "pipeline's dit_config")
        else:
            weights = read_lora(path, self.dit_config, strict=strict)
        if not merge:
            return dataclasses.replace(self, unmerged_loras=(*self.unmerged_loras, (weights, strength, names)))
        experts = merge_into_experts(self.experts, {n: [(weights.deltas, float(strength))] for n in names})
        return dataclasses.replace(self, experts=experts)

    def quantized(self, weights: str) -> "Wan22Pipeline":
        """A new pipeline whose DiT experts and text encoder hold weight-only quantised Linears ("int8" or
        "fp8" e4m3, one scale per output channel: `ops.quant`); activations keep the pipeline's dtype, the VAE is
        unchanged. Apply LoRAs before quantising. This pipeline is unchanged."""
        check_mode(weights)
        if self.unmerged_loras:
            raise InputError("quantized: this pipeline applies unmerged LoRAs; merge them (merge=True) before "
                             "quantising")

        def quantize(graphdef, state, kind):
            g, s = nnx.split(quantize_module(nnx.merge(graphdef, state), weights))
            return g, (s if self.mesh is None else place_state(s, kind, self.mesh))

        experts = {n: quantize(g, s, "dit") for n, (g, s) in self.experts.items()}
        text_encoder = self.text_encoder
        if text_encoder is not None:
            text_encoder = TextEncoder(quantize_module(text_encoder.model(), weights), text_encoder.tokenizer,
                                       cache_size=text_encoder.cache_size)
        return dataclasses.replace(self, experts=experts, text_encoder=text_encoder)

    def with_vae_tiling(self, tile: int | None = 256, overlap: int = 64) -> "Wan22Pipeline":
        """A new pipeline that decodes/encodes in overlapping spatial tiles (bounded memory; not bit-exact, see
        vae_tiling); tile=None: whole frames."""
        return dataclasses.replace(self, vae_tiling=None if tile is None else Tiling(tile=tile, overlap=overlap))

    # ------------------------------------------------------------------------------------------ pieces
    def encode_prompts(self, prompts: Sequence[str]) -> jax.Array:
        """[B, text_len, text_dim] zero-padded context (cached per prompt string)."""
        if self.text_encoder is None:
            why = self.no_text_encoder_reason or "this pipeline has no tokenizer/text encoder"
            raise InputError(f"{why}; without one, pass prompt_embeds and negative_prompt_embeds instead of text")
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
            x_T = jax.random.normal(request.key, (b, *shape), jnp.float32)
        context = self._context(request.prompts, request.prompt_embeds)
        with warnings.catch_warnings():
            if request.negative_prompts and set(request.negative_prompts) == {self.task.negative_prompt}:
                # the task's own default, not the user's words: a tokenizer gap there is not theirs to fix
                warnings.simplefilter("ignore", UnknownTokenWarning)
            context_null = self._context(request.negative_prompts, request.negative_prompt_embeds)
        y, first_latent, cond_latent = self.image_conditioning(request.image, request.num_frames, shape, b)
        return DenoiseInputs(x_T, context, context_null, y, first_latent), cond_latent

    # ------------------------------------------------------------------------------------------ generation
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 image=None, num_frames: int | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | Sequence[float] | None = None,
                 solver: str = "unipc", shift: float | None = None, eta: float = 0.0, seed: int | None = None,
                 key=None, num_videos_per_prompt: int = 1, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, max_area: int | None = None, batch_cfg: bool = True,
                 output_type: str = "video", return_trajectory: bool = False, progress: Progress = True,
                 callback_on_step_end: StepCallback | None = None, step_cache=None,
                 check_memory: bool = True) -> PipelineOutput:
        """Generates `num_videos_per_prompt` videos per prompt.

        Every argument is checked before any model runs (InputError naming the argument, its value and what is
        allowed); legal but odd values warn (UnusualInputWarning); a request that cannot fit in memory is
        refused (InsufficientMemoryError) before it runs.

        Args:
          prompt: a prompt or a list; negative_prompt: None uses the task's default (official: the official one).
          image: first frame for i2v-A14B / ti2v-5B (PIL image or [H, W, 3] array); an error for t2v tasks.
          num_frames: 1 + 4k (task default: 81 or 121). height, width: pixels (task default; for image tasks
            the size follows the image and max_area as the official code, unless both are given).
          num_inference_steps: a whole number >= 1; guidance_scale: > 0, a (low_noise, high_noise) pair on
            A14B; shift: > 0. Task defaults when None.
          solver: "unipc" or "dpm++" (official schedules), or any name of `wan22_jax.samplers.sampler_names()`
            (on the shifted linear schedule). eta: noise re-injection of the stochastic "ddim" sampler, in [0, 1].
          seed: an integer in [0, 2**32); the initial noise is jax.random.normal(jax.random.key(seed)) (torch's
            RNG cannot be reproduced). key: a JAX PRNG key instead of a seed (not both). Default: seed 0.
          num_videos_per_prompt: videos per prompt (each prompt repeated, different noise per video).
          latents: explicit initial noise [B, z, F', h, w] (or [z, F', h, w]) instead of the seed's.
          prompt_embeds / negative_prompt_embeds: [B, L, text_dim] text-encoder outputs (trimmed or zero-padded)
            instead of prompts.
          output_type: "video" (uint8 frames), "np" (float32 frames in [0, 1]), "pil" (PIL images), or
            "latent" (no decode).
          return_trajectory: also return the per-step samples and velocities.
          progress: True: status bars (compiling, denoising, decoding); False / None: silent; a callable:
            called as progress(done, total) after each finished step (from the host, outside the compiled loop).
          callback_on_step_end: called as callback(step, t, latents) after each step, from the host outside the
            compiled loop (step from 0, t the model timestep, latents [B, z, F', h, w]); the next step already
            runs meanwhile.
          step_cache: a `wan22_jax.models.step_cache.StepCache` to skip the DiT blocks at steps whose input
            barely changed (an approximation: measure its cost); the count lands in `skipped_steps`.
          check_memory: compare the compiled loop's memory plan with the free memory before running.
        Returns:
          PipelineOutput(videos=[Video] (B of them), frames (in output_type), video [B, 3, F, H, W],
          latents [B, z, F', h, w], trajectory=None | {"samples", "velocities"}, skipped_steps, denoise_s).
        """
        request = validate_request(
            self.task, self.dit_config, self.vae_config.z_dim, has_text_encoder=self.text_encoder is not None,
            no_text_encoder_reason=self.no_text_encoder_reason, prompt=prompt, negative_prompt=negative_prompt,
            image=image, num_frames=num_frames, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, solver=solver, shift=shift,
            eta=eta, seed=seed, key=key, num_videos_per_prompt=num_videos_per_prompt, latents=latents,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, max_area=max_area,
            batch_cfg=batch_cfg, output_type=output_type, return_trajectory=return_trajectory, progress=progress,
            callback_on_step_end=callback_on_step_end, step_cache=step_cache)
        return self.generate(request, check_memory=check_memory)

    def _devices(self) -> list:
        return list(self.mesh.devices.flat) if self.mesh is not None else [jax.devices()[0]]

    def _abstract_inputs(self, request: Request) -> DenoiseInputs:
        """The DenoiseInputs of `request` as shapes only (nothing allocated)."""
        b, shape, f32 = request.batch, request.latent_shape, jnp.float32
        text = jax.ShapeDtypeStruct((b, self.dit_config.text_len, self.dit_config.text_dim), f32)
        y = first = None
        if request.image is not None and self.task.mode == "i2v":
            y = jax.ShapeDtypeStruct((b, 4 + shape[0], *shape[1:]), f32)
        elif request.image is not None:
            first = jax.ShapeDtypeStruct((b, shape[0], 1, *shape[2:]), f32)
        return DenoiseInputs(jax.ShapeDtypeStruct((b, *shape), f32), text, text, y, first)

    def check_memory(self, request: Request, plan: DenoisePlan | None = None, loras: tuple | None = None) -> int:
        """Refuses a request that cannot fit: first from its shapes alone, then from the memory plan of the
        compiled loop (compiled here, reused by the run). Raises InsufficientMemoryError with the needed and
        available memory and what to try.

        Args:
          request: from `validate_request`. plan: its DenoisePlan (made if None). loras: `unmerged_for(steps)`
            (made if None).
        Returns:
          The bytes the run needs beyond the weights (0 where the backend reports no memory plan).
        """
        plan = make_plan(request, self.task) if plan is None else plan
        loras = self.unmerged_for(request.steps) if loras is None else loras
        what = (f"{request.batch} video(s) of {request.num_frames} frames at {request.width}x{request.height}"
                + (" (latents only)" if request.output_type == "latent" else ""))
        decode = request.output_type != "latent"
        devices, limits = self._devices(), dict(tiled=self.vae_tiling is not None, sharded=self.mesh is not None)
        refuse_if_too_big(lower_bound(request.batch, request.latent_shape, request.num_frames, request.height,
                                      request.width, decode), devices, what, **limits)
        names = EXPERTS if self.task.two_experts else ("model",)
        states = tuple(self.experts[n][1] for n in names)
        per_step = bool(request.progress) or request.callback is not None
        with stage("compiling", request.progress is True), mesh_context(self.mesh):
            need = program_memory(self.experts[names[0]][0], plan, states, self._abstract_inputs(request),
                                  request.tables, self._sampler_key(request, plan), per_step=per_step,
                                  loras=loras)
            if decode:  # the loop's buffers are gone by then: the larger of the two programs counts
                need = max(need, self._decoder((request.batch, *request.latent_shape))[1])
        refuse_if_too_big(need, devices, what, **limits)
        return need

    def _decoder(self, shape: tuple[int, ...]):
        """(decode(latents) for latents of `shape`, the bytes its program needs beyond the VAE weights).

        Unsharded, the program is compiled here once per shape and kept, so the memory check and the run share
        one compilation; on a mesh the decode is `vae_decode`'s and its need is the video's size.
        """
        if self.mesh is not None:
            b, _, f, h, w = shape
            s = self.vae_config.spatial_stride
            return self.vae_decode, lower_bound(b, (0,), 1 + 4 * (f - 1), h * s, w * s, True)
        if shape not in self._decoders:
            graphdef, state = self.vae
            tiling = self.vae_tiling
            program = jax.jit(lambda st, lat: vae_decode(graphdef, st, lat, None, tiling=tiling)).lower(
                state, jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
            m = program.memory_analysis()
            need = 0 if m is None else m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            self._decoders[shape] = (lambda latents: program(state, jnp.asarray(latents, jnp.float32)), int(need))
        return self._decoders[shape]

    def unmerged_for(self, steps: int) -> tuple | None:
        """The unmerged LoRAs as the loop takes them: per expert (EXPERTS order, or ("model",)) an ExpertLoras
        with every LoRA's strength at each of `steps` steps, or None; None without unmerged LoRAs. Raises
        InputError for a per-step schedule of another length (before any compute)."""
        if not self.unmerged_loras:
            return None
        names = EXPERTS if self.task.two_experts else ("model",)
        tables = [strength_table(s, steps, str(w.source)) for w, s, _ in self.unmerged_loras]
        out = []
        for name in names:
            mine = [(w.deltas, t) for (w, _, to), t in zip(self.unmerged_loras, tables) if name in to]
            out.append(build_expert_loras(mine, flat_state(self.experts[name][1])) if mine else None)
        return tuple(out)

    @staticmethod
    def _sampler_key(request: Request, plan: DenoisePlan):
        return jax.random.fold_in(request.key, 1) if plan.sampler.stochastic else None

    def generate(self, request: Request, *, check_memory: bool = True) -> PipelineOutput:
        """Runs a checked request (from `validate_request`) through plan, memory check, denoise and decode.

        Args:
          request: the checked call. check_memory: run `check_memory` first.
        Returns:
          The PipelineOutput (see `__call__`).
        """
        plan = make_plan(request, self.task)
        loras = self.unmerged_for(request.steps)
        if check_memory:
            self.check_memory(request, plan, loras)
        inputs, cond_latent = self.inputs(request)
        names = EXPERTS if self.task.two_experts else ("model",)
        states = tuple(self.experts[n][1] for n in names)
        graphdef = self.experts[names[0]][0]
        key = self._sampler_key(request, plan)
        on_step = None
        if request.callback is not None:
            timesteps = np.asarray(request.schedule.timesteps)
            on_step = lambda i, x: request.callback(i, float(timesteps[i]), x)  # noqa: E731

        t0 = time.perf_counter()
        with step_reporter(request.progress, request.steps) as report, mesh_context(self.mesh):
            final, aux = denoise(graphdef, plan, states, inputs, request.tables, key, progress=report,
                                 on_step=on_step, loras=loras)
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
        with stage("decoding (VAE)", request.progress is True):
            video = np.asarray(self._decoder(final.shape)[0](final) if check_memory else self.vae_decode(final))
        frames = np.stack([to_uint8(v) for v in video])
        return PipelineOutput(videos=[Video(f, fps=self.task.fps) for f in frames],
                              frames=as_output(frames, request.output_type), video=video, **extra)

