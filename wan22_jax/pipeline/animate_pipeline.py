"""`AnimatePipeline`: Animate-14B (official `WanAnimate`) loaded from its release folder, run on decoded or file inputs.

    pipe = Wan22Pipeline.from_pretrained("Wan2.2-Animate-14B")          # an AnimatePipeline for that folder
    out = pipe(src_root="preprocessed/", mode="animate", seed=0)       # or ref_image=..., pose_video=...
    out.videos[0].save("animated.mp4")

The release folder holds the Animate DiT (`config.json` + safetensors), the CLIP image encoder, the Wan2.1 VAE,
umT5 with its tokenizer folder and `relighting_lora.ckpt`. As the official constructor's `use_relighting_lora`,
the LoRA is merged at load time when asked (the official recommends it for replacement). The noise of every clip
is drawn with JAX's generator from `seed` (the official draws it with torch's, so the videos differ by seed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from wan22_jax.configs import DEFAULT_NEGATIVE_PROMPT
from wan22_jax.convert.animate import LORA_FILE, load_animate, load_clip, load_relighting_lora, with_lora
from wan22_jax.convert.vae import load_vae
from wan22_jax.errors import InputError, InputFileError
from wan22_jax.models.animate.model_animate import AnimateConfig
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.pipeline.animate import check_animate_inputs, generate_animate, noise_shape
from wan22_jax.pipeline.animate_inputs import animate_inputs, check_mode
from wan22_jax.pipeline.files import load_text_encoder
from wan22_jax.pipeline.memory import refuse_clip_loop
from wan22_jax.pipeline.progress import stage
from wan22_jax.pipeline.release_args import model_dtypes, release_folder
from wan22_jax.samplers.registry import get_sampler
from wan22_jax.sharding import make_mesh, mesh_context
from wan22_jax.sharding.loading import place_state
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.video import PipelineOutput, Video, to_uint8

ANIMATE_TASK = "animate-14B"
ANIMATE_CLASS = "WanAnimateModel"


@dataclasses.dataclass(frozen=True)
class AnimateDefaults:
    """The call's defaults (official wan/configs/wan_animate_14B.py and `WanAnimate.generate`)."""

    clip_len: int = 77
    refert_num: int = 1
    steps: int = 20
    shift: float = 5.0
    guide_scale: float = 1.0
    solver: str = "dpm++"
    fps: int = 30
    prompt: str = "视频中的人在做动作"  # official config.prompt, used when no prompt is given
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT


def is_animate_folder(path: str | os.PathLike | None) -> bool:
    """Whether `path` is an Animate release folder (its config.json names WanAnimateModel)."""
    if path is None or not (Path(path) / "config.json").is_file():
        return False
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("_class_name") == ANIMATE_CLASS
    except (OSError, ValueError, AttributeError):
        return False  # a broken config.json is reported by the loader that reads it


def _embeds(value, what: str, cfg: AnimateConfig) -> np.ndarray:
    e = np.asarray(value, np.float32)
    if e.ndim == 3 and e.shape[0] == 1:
        e = e[0]
    if e.ndim != 2 or e.shape[1] != cfg.text_dim or not 1 <= e.shape[0] <= cfg.text_len:
        raise InputError(f"{what} has shape {e.shape}; expected [L, {cfg.text_dim}] with 1 <= L <= {cfg.text_len} "
                         "(the text encoder's output trimmed to the prompt)")
    return e


@dataclasses.dataclass(frozen=True, eq=False)
class AnimatePipeline:
    """Animate DiT + CLIP image encoder + Wan2.1 VAE + text encoder. Build with `from_pretrained` (or
    `Wan22Pipeline.from_pretrained` on an Animate folder). Immutable: `sharded` returns a new pipeline.

    Attributes:
      dit, clip, vae: (graphdef, state) each. dit_config: the AnimateConfig. vae_config: the VAE's config.
      text_encoder: a TextEncoder, or None (then pass prompt_embeds). defaults: AnimateDefaults.
      dtype: the DiT's dtype. mesh: the device mesh the DiT and VAE are sharded over, or None.
      relighting_lora: whether the relighting LoRA is merged into the DiT. source: the folder loaded, if any.
    """

    dit: tuple[Any, Any]
    dit_config: AnimateConfig
    clip: tuple[Any, Any]
    vae: tuple[Any, Any]
    vae_config: Any
    text_encoder: TextEncoder | None = None
    defaults: AnimateDefaults = dataclasses.field(default_factory=AnimateDefaults, kw_only=True)
    dtype: Any = dataclasses.field(default=jnp.bfloat16, kw_only=True)
    mesh: Any = dataclasses.field(default=None, kw_only=True)
    relighting_lora: bool = dataclasses.field(default=False, kw_only=True)
    source: Path | None = dataclasses.field(default=None, kw_only=True)
    no_text_encoder_reason: str = dataclasses.field(default="", kw_only=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: Any = None, t5_dtype: Any = None, mesh=None,
                        kernels: Kernels = XLA, use_relighting_lora: bool = False,
                        progress: bool = True) -> "AnimatePipeline":
        """Loads the official Wan2.2-Animate-14B release folder.

        Args:
          path: the folder. dtype: the DiT's dtype ("bf16" default, as the official bf16 run; "fp32" for parity).
          t5_dtype: the text encoder's (default: as dtype). The VAE and CLIP run in fp32.
          mesh: a Mesh or a spec such as "fsdp=4,seq=2": the DiT loads straight onto its shards (DiT rules), the
            VAE is split by its rules and CLIP replicated; None: one device.
          kernels: the ops' implementation (`wan22_jax.ops.Kernels`). use_relighting_lora: merge
            `relighting_lora.ckpt` (official --use_relighting_lora; meant for replacement).
          progress: a status bar while loading.
        Returns:
          The pipeline. Raises InputFileError (no folder, no LoRA file), CheckpointFormatError, WeightMappingError.
        """
        path = release_folder(path, f"{ANIMATE_TASK} has no embedded model: give the Wan2.2-Animate-14B folder")
        if not is_animate_folder(path):
            raise InputError(f"{path}: not an Animate-14B folder (its config.json does not name {ANIMATE_CLASS})")
        if use_relighting_lora and not (path / LORA_FILE).is_file():
            raise InputFileError(f"{path / LORA_FILE}: no such file (needed by use_relighting_lora)")
        dtype, t5_dtype = model_dtypes(dtype, t5_dtype)
        mesh = None if mesh is None else make_mesh(mesh)
        with stage(f"loading {path.name}", progress, total=4) as bar:
            dit = load_animate(path, dtype=dtype, param_dtype=dtype, mesh=mesh)
            if use_relighting_lora:
                adapters, lora_cfg = load_relighting_lora(path, dit.cfg)
                dit = with_lora(dit, adapters, lora_cfg)
            bar.update(1)
            clip = load_clip(path)
            bar.update(1)
            vae = load_vae(path, version="2.1", dtype=jnp.float32)
            bar.update(1)
            text_encoder, why = load_text_encoder(path, dit.cfg.text_len, t5_dtype, kernels)
            bar.update(1)
        dit_cfg, vae_cfg = dit.cfg, vae.config
        dit, clip, vae = (nnx.split(with_kernels(m, kernels)) for m in (dit, clip, vae))
        pipe = cls(dit, dit_cfg, clip, vae, vae_cfg, text_encoder, dtype=dtype, relighting_lora=use_relighting_lora,
                   source=path, no_text_encoder_reason=why)
        return pipe if mesh is None else pipe.sharded(mesh)

    def sharded(self, mesh) -> "AnimatePipeline":
        """A new pipeline over `mesh` (a Mesh or a spec): the DiT by the DiT rules, the VAE by the VAE rules, CLIP
        replicated (it runs once per reference image); generation then runs under the mesh."""
        mesh = make_mesh(mesh)
        replicated = NamedSharding(mesh, PartitionSpec())
        clip = (self.clip[0], jax.tree.map(lambda x: jax.device_put(x, replicated), self.clip[1]))
        return dataclasses.replace(self, dit=(self.dit[0], place_state(self.dit[1], "dit", mesh)), clip=clip,
                                   vae=(self.vae[0], place_state(self.vae[1], "vae", mesh)), mesh=mesh)

    def with_kernels(self, kernels: Kernels) -> "AnimatePipeline":
        """A new pipeline whose DiT, CLIP, VAE and text encoder run their ops with `kernels`; weights shared."""
        def retarget(graphdef, state):
            return nnx.split(with_kernels(nnx.merge(graphdef, state), kernels))

        text_encoder = None if self.text_encoder is None else self.text_encoder.with_kernels(kernels)
        return dataclasses.replace(self, dit=retarget(*self.dit), clip=retarget(*self.clip), vae=retarget(*self.vae),
                                   text_encoder=text_encoder)

    def check_memory(self, clips: int, clip_len: int, frames: int, height: int, width: int) -> int:
        """Refuses a request that cannot fit, from its shapes alone (`memory.refuse_clip_loop`: one clip's loop
        and decode on the devices, the whole video in host memory), before anything runs.

        Args:
          clips: R; clip_len: frames per clip; frames: the output's (the pose video's); height, width: its size.
        Returns:
          The bytes needed on the devices. Raises InsufficientMemoryError with the needed and available memory
          and what to try.
        """
        devices = list(self.mesh.devices.flat) if self.mesh is not None else [jax.devices()[0]]
        return refuse_clip_loop(devices, f"{clips} clip(s) of {clip_len} frames at {width}x{height}",
                                noise_shape(clips, clip_len, height, width)[1:], clip_len, height, width, frames,
                                sharded=self.mesh is not None,
                                smaller=("a shorter pose video", "a shorter clip_len (--frames)",
                                         "a smaller pose video"))

    def _context(self, prompt, embeds, what: str) -> np.ndarray:
        if embeds is not None:
            return _embeds(embeds, what, self.dit_config)
        if self.text_encoder is None:
            raise InputError(f"this pipeline has no text encoder: pass {what}, or load a folder with a tokenizer "
                             f"({self.no_text_encoder_reason})")
        return np.asarray(self.text_encoder.encode(prompt)[0], np.float32)

    def __call__(self, ref_image=None, pose_video=None, face_video=None, *, mode: str = "animate",
                 bg_video=None, mask_video=None, src_root: str | os.PathLike | None = None,
                 prompt: str | None = None, negative_prompt: str | None = None, prompt_embeds=None,
                 negative_prompt_embeds=None, clip_len: int | None = None, refert_num: int | None = None,
                 num_inference_steps: int | None = None, shift: float | None = None,
                 guidance_scale: float | None = None, solver: str | None = None, seed: int = 0,
                 progress: bool = True, check_memory: bool = True) -> PipelineOutput:
        """Animates the reference character with the pose and face videos (mode "animate"), or replaces the
        person of the driving video by it (mode "replace", with the background and mask videos).

        Args:
          ref_image: [h, w, 3] uint8, a PIL image or a path (padded and resized to the pose frames).
          pose_video: [T, H, W, 3] uint8 or a video path (H, W multiples of 16). face_video: [T, S, S, 3] face
            crops (S = 512 for the release) or a path. bg_video, mask_video: [T, H, W, 3] or paths (replace).
          src_root: instead, or for the inputs not given, the official preprocessing folder (src_ref.png,
            src_pose.mp4, src_face.mp4, src_bg.mp4, src_mask.mp4).
          prompt, negative_prompt: text (defaults: the official ones); or prompt_embeds /
            negative_prompt_embeds [L, text_dim] (the text encoder's trimmed output).
          clip_len: frames per clip, 4k + 1 (default 77); refert_num: frames carried between clips, 1 or 5.
          num_inference_steps, shift, solver, guidance_scale: the sampler (defaults 20, 5.0, dpm++, 1.0: guidance
            only when > 1, officially for expression control). seed: the noise. progress: a line per clip.
          check_memory: refuse a request whose shapes alone need more memory than is free (`check_memory`).
        Returns:
          PipelineOutput: videos [one Video, T frames], frames [1, T, H, W, 3] uint8, video [1, 3, T, H, W],
          latents [R, 16, clip_len // 4 + 2, H / 8, W / 8] per clip, timesteps, denoise_s.
        Raises:
          InputError / InputFileError before any compute: a missing, unreadable or mismatched input;
          InsufficientMemoryError (also before) when it cannot fit.
        """
        d = self.defaults
        replace = check_mode(mode)
        inp = animate_inputs(src_root=src_root, ref_image=ref_image, pose_video=pose_video, face_video=face_video,
                             bg_video=bg_video, mask_video=mask_video, mode=mode)
        clip_len = d.clip_len if clip_len is None else clip_len
        refert_num = d.refert_num if refert_num is None else refert_num
        steps = d.steps if num_inference_steps is None else num_inference_steps
        solver = d.solver if solver is None else solver
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise InputError(f"num_inference_steps={steps!r}: must be a whole number >= 1")
        get_sampler(solver)
        mask = inp["mask_video"]
        n_clips = check_animate_inputs(inp["ref_image"], inp["pose_video"], inp["face_video"], inp["bg_video"],
                                       mask if mask is None or mask.ndim != 4 else mask[..., 0], clip_len, refert_num,
                                       self.dit_config.motion_encoder_size, replace)
        h, w = inp["pose_video"].shape[1:3]
        if check_memory:
            self.check_memory(n_clips, clip_len, inp["pose_video"].shape[0], h, w)
        context = self._context(d.prompt if prompt is None else prompt, prompt_embeds, "prompt_embeds")
        context_null = self._context(d.negative_prompt if negative_prompt is None else negative_prompt,
                                     negative_prompt_embeds, "negative_prompt_embeds")
        noise = np.asarray(jax.random.normal(jax.random.key(seed), noise_shape(n_clips, clip_len, h, w)))
        dit, vae, clip = (nnx.merge(*m) for m in (self.dit, self.vae, self.clip))
        t0 = time.perf_counter()
        with stage(f"generating {n_clips} clip(s) of {clip_len} frames", progress), mesh_context(self.mesh):
            res = generate_animate(dit, vae, clip, context=context, context_null=context_null, noise=noise,
                                   replace=replace, clip_len=clip_len, refert_num=refert_num, steps=steps,
                                   shift=d.shift if shift is None else shift, solver=solver,
                                   guide_scale=d.guide_scale if guidance_scale is None else guidance_scale,
                                   trajectory=False, mesh=self.mesh, **inp)
        frames = to_uint8(res.video)
        return PipelineOutput(videos=[Video(frames, fps=d.fps)], frames=frames[None], video=res.video[None],
                              latents=res.latents, timesteps=res.timesteps, denoise_s=time.perf_counter() - t0)

    animate = __call__  # `pipe.animate(...)`: the same call, for readers who prefer the verb


__all__ = ["ANIMATE_TASK", "AnimateDefaults", "AnimatePipeline", "is_animate_folder"]
