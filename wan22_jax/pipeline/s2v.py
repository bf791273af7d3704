"""S2V-14B generation (official `WanS2V.generate` in wan/speech2video.py): a reference image, a speech track and
optionally a pose video in, a video of any length out, clip after clip.

    pipe = Wan22Pipeline.from_pretrained("Wan2.2-S2V-14B")           # dispatches here (an S2VPipeline)
    out = pipe(prompt="a woman singing", image="ref.png", audio="song.wav")
    out.videos[0].save("sing.mp4")                                    # the audio track muxed in

Per clip r (`generate_clips`, shared with the `pipe_s2v` verify runner):
* motion latents = VAE(the last 73 frames of (zeros ++ the video so far)); clip 0 drops the motion tokens
  (`drop_first_motion`) unless `init_first_frame` puts the reference image into its last 6 motion frames;
* pose latents = VAE(first pose frame ++ the clip's pose frames)[:, :, 1:] (zeros without a pose video);
* the audio features of video frames r * infer_frames ... (r + 1) * infer_frames;
* a UniPC (or DPM++) loop over the S2V DiT, with guidance when guide_scale > 1 (uncond: negative prompt, silent
  audio); decode(cat(motion or reference latents, latents)), keep the last infer_frames frames (clip 0 with the
  motion dropped: without its first 3).
The call's inputs (size, image, audio, pose video) are read and checked first, by s2v_inputs.py.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from wan22_jax.convert.s2v import load_s2v
from wan22_jax.convert.vae import load_vae
from wan22_jax.convert.wav2vec2 import load_wav2vec2
from wan22_jax.errors import InputError, InputFileError, Wan22Warning
from wan22_jax.models import vae as vae_ops
from wan22_jax.models.s2v.audio_encoder import (SAMPLE_RATE, audio_embedding, bucket_indices,
                                                linear_interpolation, normalize)
from wan22_jax.models.s2v.model_s2v import S2VConfig
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.pipeline.files import load_text_encoder
from wan22_jax.pipeline.memory import refuse_clip_loop
from wan22_jax.pipeline.progress import stage
from wan22_jax.pipeline.release_args import model_dtypes, release_folder
from wan22_jax.pipeline.s2v_inputs import (clip_count, is_s2v_folder, output_size, positive_float,
                                           positive_int, read_image, read_pose_video, read_waveform, resize_crop)
from wan22_jax.samplers.loop import sample
from wan22_jax.samplers.registry import get_sampler
from wan22_jax.samplers.schedule import official_schedule
from wan22_jax.sharding import make_mesh, mesh_context
from wan22_jax.sharding.loading import place_state, vae_decode
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.video import PipelineOutput, Video, as_output, to_uint8

TASK = "s2v-14B"
WAV2VEC_FOLDER = "wav2vec2-large-xlsr-53-english"  # hard-coded by the official speech2video.py
SOLVERS = ("unipc", "dpm++")  # what WanS2V.generate accepts
# wan/configs/wan_s2v_14B.py: S2V has its own negative prompt (not the shared one)
S2V_NEGATIVE_PROMPT = ("画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
                       "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，"
                       "背景人很多，倒着走")


@dataclasses.dataclass(frozen=True, kw_only=True)
class S2VDefaults:
    """The sampling defaults of S2V-14B (official config + generate.py), overridable per call."""

    sample_shift: float = 3.0
    sample_steps: int = 40
    guide_scale: float = 4.5
    infer_frames: int = 80  # generate.py --infer_frames
    motion_frames: int = 73
    drop_first_motion: bool = True
    fps: int = 16
    max_area: int = 1280 * 720  # generate.py --size 1280*720 (an area: the size follows the image)
    negative_prompt: str = S2V_NEGATIVE_PROMPT
    num_train_timesteps: int = 1000


@dataclasses.dataclass(frozen=True)
class S2VClips:
    """What `generate_clips` returns; leading axis R = clips.

    motion_latents [R, 16, 19, h, w] (fed to clip r), cond_latents [R, 16, F, h, w] (pose), latents [R, 16, F, h, w],
    latents_per_step / noise_pred_per_step [R, steps, 16, F, h, w], timesteps [steps], ref_latents [16, 1, h, w],
    video [3, T, H, W] in [-1, 1] (T = R * infer_frames, minus 3 when clip 0 drops its motion frames).
    """

    motion_latents: np.ndarray
    cond_latents: np.ndarray
    latents: np.ndarray
    latents_per_step: np.ndarray
    noise_pred_per_step: np.ndarray
    timesteps: np.ndarray
    ref_latents: np.ndarray
    video: np.ndarray


def pixels(frames_uint8: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [1, 3, T, H, W] float32 in [-1, 1] (to_tensor * 2 - 1, as officially)."""
    x = frames_uint8.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    return np.transpose(x, (3, 0, 1, 2))[None]


# ------------------------------------------------------------------------------------------------ audio
@functools.partial(jax.jit, static_argnums=(0, 3))
def _hidden_states(graphdef, state, input_values, last_normed):
    return nnx.merge(graphdef, state)(input_values, last_normed=last_normed)[:, 0]


def audio_features(model, waveform: np.ndarray, infer_frames: int, *, fps: int = 16,
                   last_normed: bool = True) -> tuple[np.ndarray, int]:
    """`models.s2v.audio_encoder.encode_audio` with the wav2vec2 forward compiled once per waveform length:
    [N] float32 at 16 kHz -> (audio_emb [1, 25, hidden, num_repeat * infer_frames], num_repeat)."""
    hidden = _hidden_states(*nnx.split(model), jnp.asarray(normalize(waveform)), bool(last_normed))
    feat = linear_interpolation(hidden)
    idx, valid, num_repeat = bucket_indices(feat.shape[1], infer_frames, fps=fps)
    return np.asarray(audio_embedding(feat, idx, valid)), num_repeat


# ------------------------------------------------------------------------------------------------ the clip loop
@functools.partial(jax.jit, static_argnames=("sampler", "steps", "shift", "solver", "num_train", "guide_scale",
                                             "motion_frames", "drop_motion_frames"))
def denoise_clip(graphdef, state, noise, context, context_null, ref, motion, cond, audio, *, sampler, steps, shift,
                 solver, num_train, guide_scale, motion_frames, drop_motion_frames):
    """One clip's sampling loop: noise [1, 16, F, h, w] -> (latents, {"samples", "velocities"}). Guidance as
    officially: u + g (c - u) with the uncond pass on the negative context and audio * 0, only when g > 1."""
    model = nnx.merge(graphdef, state)
    kv, kv_null = model.encode_context(context), model.encode_context(context_null)
    common = dict(ref_latents=ref, motion_latents=motion, cond_states=cond, motion_frames=motion_frames,
                  drop_motion_frames=drop_motion_frames)

    def velocity(x, t, i):
        tt = jnp.reshape(t, (1,))
        c = model(x, tt, context_kv=kv, audio_input=audio, **common)
        if guide_scale <= 1:  # official: no unconditional pass
            return c
        u = model(x, tt, context_kv=kv_null, audio_input=0.0 * audio, **common)
        return u + guide_scale * (c - u)

    schedule = official_schedule(solver, steps, shift, num_train_timesteps=num_train)
    return sample(sampler, velocity, noise, schedule, return_trajectory=True)


def pose_latents(encode: Callable, pose_video: np.ndarray | None, repeats: int, infer_frames: int,
                 latent_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Official `load_pose_cond`: per clip VAE(first frame ++ clip frames)[:, :, 1:] of the pose video padded with
    -1 frames to repeats * infer_frames; without a pose video zeros (officially COND[0] * 0).

    Args:
      encode: [1, 3, T, H, W] -> latents. pose_video: [T, H, W, 3] uint8 at the output size, or None.
      latent_shape: (16, F, h, w) of one clip.
    Returns:
      repeats arrays [1, 16, F, h, w].
    """
    if pose_video is None:
        return [np.zeros((1, *latent_shape), np.float32)] * repeats
    pose = pixels(pose_video[:repeats * infer_frames])
    _, _, t, height, width = pose.shape
    pose = np.concatenate([pose, -np.ones((1, 3, repeats * infer_frames - t, height, width), np.float32)], axis=2)
    return [encode(np.concatenate([c[:, :, :1], c], axis=2))[:, :, 1:] for c in np.split(pose, repeats, axis=2)]


def generate_clips(dit: tuple[Any, Any], vae: tuple[Any, Any], *, context: np.ndarray, context_null: np.ndarray,
                   ref_image: np.ndarray, audio_emb: np.ndarray, noise: np.ndarray,
                   pose_video: np.ndarray | None = None, infer_frames: int, motion_frames: int = 73,
                   steps: int, shift: float, guide_scale: float, solver: str = "unipc",
                   drop_first_motion: bool = True, init_first_frame: bool = False, num_train_timesteps: int = 1000,
                   on_clip: Callable[[int, int], None] | None = None, mesh=None) -> S2VClips:
    """The official clip loop of `WanS2V.generate` after its preprocessing (all inputs at the output size).

    Args:
      dit: (graphdef, state) of the S2V DiT; vae: (graphdef, state) of the Wan2.1 VAE (run in float32).
      context, context_null: [Lp, text_dim], [Ln, text_dim] text contexts (trimmed, or zero-padded to text_len).
      ref_image: [H, W, 3] uint8; audio_emb: [1, 25, audio_dim, >= R * infer_frames] (`encode_audio`).
      noise: [R, 16, infer_frames / 4, H / 8, W / 8] initial latents of the R clips.
      pose_video: [T, H, W, 3] uint8 pose frames at 16 fps, or None.
      infer_frames: frames per clip (a multiple of 4). motion_frames: pixel frames of motion context (73).
      steps, shift, guide_scale, solver, num_train_timesteps: the sampler. drop_first_motion: clip 0 without the
      motion tokens. init_first_frame: the reference image as the last 6 motion frames (then nothing dropped).
      on_clip: called as on_clip(r, R) before clip r.
      mesh: the device mesh the DiT and VAE states are sharded over (`S2VPipeline.sharded`), or None: the clips
        are denoised under it and decoded split on rows (`vae_decode`).
    Returns:
      S2VClips.
    """
    with mesh_context(mesh):  # the DiT's sharding constraints read it
        enc = lambda v: np.asarray(vae_ops.encode(*vae, jnp.asarray(v)))  # noqa: E731
        dec = lambda z: np.asarray(vae_decode(*vae, jnp.asarray(z), mesh))  # noqa: E731
        repeats = noise.shape[0]
        ref_pixels = pixels(ref_image[None])  # [1, 3, 1, H, W]
        _, _, _, height, width = ref_pixels.shape
        ref_latents = enc(ref_pixels)  # [1, 16, 1, h, w]
        last_frames = np.zeros((1, 3, motion_frames, height, width), np.float32)
        if init_first_frame:
            drop_first_motion = False
            last_frames[:, :, -6:] = ref_pixels
        motion = enc(last_frames)
        conds = pose_latents(enc, pose_video, repeats, infer_frames, noise.shape[1:])
        static = dict(sampler=get_sampler(solver), steps=int(steps), shift=float(shift), solver=solver,
                      num_train=int(num_train_timesteps), guide_scale=float(guide_scale),
                      motion_frames=(motion_frames, (motion_frames + 3) // 4))
        context, context_null = jnp.asarray(context[None]), jnp.asarray(context_null[None])
        out = {k: [] for k in ("motion_latents", "latents_per_step", "noise_pred_per_step", "latents")}
        video = []
        for r in range(repeats):
            if on_clip is not None:
                on_clip(r, repeats)
            drop = drop_first_motion and r == 0
            latents, traj = denoise_clip(*dit, jnp.asarray(noise[r][None]), context, context_null,
                                         jnp.asarray(ref_latents), jnp.asarray(motion), jnp.asarray(conds[r]),
                                         jnp.asarray(audio_emb[..., r * infer_frames:(r + 1) * infer_frames]),
                                         drop_motion_frames=drop, **static)
            latents = np.asarray(latents)
            if not np.isfinite(latents).all():
                raise FloatingPointError(f"NaN or Inf in the latents of clip {r}; check the weights' dtype and "
                                         "inputs")
            out["motion_latents"].append(motion[0])
            out["latents_per_step"].append(np.asarray(traj["samples"][1:, 0]))
            out["noise_pred_per_step"].append(np.asarray(traj["velocities"][:, 0]))
            out["latents"].append(latents[0])
            image = dec(np.concatenate([ref_latents if drop else motion, latents], axis=2))[:, :, -infer_frames:]
            if drop:
                image = image[:, :, 3:]
            overlap = min(motion_frames, image.shape[2])
            last_frames = np.concatenate([last_frames[:, :, overlap:], image[:, :, -overlap:]], axis=2)
            motion = enc(last_frames)
            video.append(image)
        schedule = official_schedule(solver, static["steps"], static["shift"],
                                     num_train_timesteps=static["num_train"])
        return S2VClips(**{k: np.stack(v) for k, v in out.items()}, cond_latents=np.stack([c[0] for c in conds]),
                        timesteps=np.asarray(schedule.timesteps), ref_latents=ref_latents[0],
                        video=np.concatenate(video, axis=2)[0])


# ------------------------------------------------------------------------------------------------ the pipeline
@dataclasses.dataclass(frozen=True, eq=False)
class S2VPipeline:
    """Text encoder + S2V DiT + Wan2.1 VAE + wav2vec2 audio encoder. Build with `from_pretrained` (or
    `Wan22Pipeline.from_pretrained` on an S2V folder, which returns one of these).

    Attributes:
      dit: (graphdef, state) of the S2V DiT; s2v_config: its S2VConfig.
      vae: (graphdef, state), always float32; vae_config.
      audio_encoder: the wav2vec2 model (float32, as officially).
      text_encoder: a TextEncoder, or None (then pass prompt_embeds / negative_prompt_embeds).
      defaults: S2VDefaults. dtype: the DiT's dtype. source: the folder it was loaded from.
      mesh: the device mesh the DiT and VAE are sharded over (`sharded`), or None: one device.
      audio_last_normed: whether the last wav2vec2 hidden state is the final LayerNorm's output: True as with
        the transformers <= 4.51.3 the official requirements pin; False as transformers >= 5 returns it (the
        reference cases were made with 5.x and are verified with False).
    """

    dit: tuple[Any, Any]
    s2v_config: S2VConfig
    vae: tuple[Any, Any]
    vae_config: Any
    audio_encoder: Any
    text_encoder: TextEncoder | None = None
    defaults: S2VDefaults = dataclasses.field(default_factory=S2VDefaults, kw_only=True)
    dtype: Any = dataclasses.field(default=jnp.bfloat16, kw_only=True)
    source: Path | None = dataclasses.field(default=None, kw_only=True)
    no_text_encoder_reason: str = dataclasses.field(default="", kw_only=True)
    audio_last_normed: bool = dataclasses.field(default=True, kw_only=True)
    mesh: Any = dataclasses.field(default=None, kw_only=True)

    @property
    def task(self) -> str:
        return TASK

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None, *, task: str | None = None, dtype: Any = None,
                        t5_dtype: Any = None, mesh=None, kernels: Kernels = XLA, progress: bool = True,
                        audio_last_normed: bool = True) -> "S2VPipeline":
        """Loads the official S2V-14B release folder: config.json + diffusion_pytorch_model*.safetensors,
        Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth (+ google/umt5-xxl/ for prompts) and
        wav2vec2-large-xlsr-53-english/.

        Args:
          path: the folder. task: None or "s2v-14B". dtype: DiT (and text encoder) dtype, default bf16 (official).
          t5_dtype: the text encoder's, default as dtype. mesh: a Mesh or a spec such as "fsdp=4,seq=2": the DiT
            loads straight onto its shards (DiT rules), the VAE is split by its rules, wav2vec2 replicated (see
            `sharded`); None: one device.
          kernels: the ops implementation. progress: a status bar while loading. audio_last_normed: see the class.
        Returns:
          The pipeline; InputError / InputFileError / CheckpointFormatError / WeightMappingError otherwise.
        """
        if task is not None and task != TASK:
            raise InputError(f"{path} is an S2V checkpoint; task={task!r} does not match (use {TASK!r} or None)")
        path = release_folder(path, f"task {TASK!r} has no embedded model: give the S2V-14B release folder")
        if not (path / WAV2VEC_FOLDER).is_dir():
            raise InputFileError(f"{path / WAV2VEC_FOLDER}: the S2V audio encoder folder is missing")
        dtype, t5 = model_dtypes(dtype, t5_dtype)
        mesh = None if mesh is None else make_mesh(mesh)
        with stage(f"loading {path.name}", progress, total=4) as bar:
            dit = with_kernels(load_s2v(path, dtype=dtype, param_dtype=dtype, mesh=mesh), kernels)
            bar.update(1)
            vae = with_kernels(load_vae(path, version="2.1", dtype=jnp.float32), kernels)
            bar.update(1)
            audio = with_kernels(load_wav2vec2(path / WAV2VEC_FOLDER), kernels)
            bar.update(1)
            text_encoder, why = load_text_encoder(path, dit.s2v.text_len, t5, kernels)
            bar.update(1)
        pipe = cls(nnx.split(dit), dit.s2v, nnx.split(vae), vae.config, audio, text_encoder, dtype=dtype,
                   source=path, no_text_encoder_reason=why, audio_last_normed=bool(audio_last_normed))
        return pipe if mesh is None else pipe.sharded(mesh)

    def sharded(self, mesh) -> "S2VPipeline":
        """A new pipeline over `mesh` (a Mesh or a spec such as "fsdp=2,seq=2"): the DiT by the DiT rules (the
        audio, motion and pose modules carry the same logical axes; a parameter without any is replicated), the
        VAE by the VAE rules (its decode then splits frames on rows), wav2vec2 replicated (it runs once per call);
        the clips are then generated under the mesh. The text encoder stays where it is. This one is unchanged."""
        mesh = make_mesh(mesh)
        replicated = NamedSharding(mesh, PartitionSpec())
        graphdef, state = nnx.split(self.audio_encoder)
        audio = nnx.merge(graphdef, jax.tree.map(lambda x: jax.device_put(x, replicated), state))
        return dataclasses.replace(self, dit=(self.dit[0], place_state(self.dit[1], "dit", mesh)),
                                   vae=(self.vae[0], place_state(self.vae[1], "vae", mesh)), audio_encoder=audio,
                                   mesh=mesh)

    def _devices(self) -> list:
        return list(self.mesh.devices.flat) if self.mesh is not None else [jax.devices()[0]]

    def check_memory(self, clips: int, infer_frames: int, height: int, width: int) -> int:
        """Refuses a request that cannot fit, from its shapes alone (`memory.refuse_clip_loop`: one clip's loop
        and decode on the devices, the whole video in host memory), before anything runs.

        Args:
          clips: R; infer_frames: frames per clip; height, width: the output size.
        Returns:
          The bytes needed on the devices. Raises InsufficientMemoryError with the needed and available memory
          and what to try.
        """
        f, motion = infer_frames // 4, (self.defaults.motion_frames + 3) // 4
        shape = (self.s2v_config.in_dim, f, height // 8, width // 8)
        # each clip decodes its motion latents (or the reference's) with its own: 1 + 4 (F' - 1) frames
        return refuse_clip_loop(self._devices(), f"{clips} clip(s) of {infer_frames} frames at {width}x{height}",
                                shape, 1 + 4 * (motion + f - 1), height, width, clips * infer_frames,
                                sharded=self.mesh is not None,
                                smaller=("fewer clips (num_clips, --num-clips)", "fewer infer_frames",
                                         "a smaller size"))

    def _encode_text(self, text: str) -> np.ndarray:
        with warnings.catch_warnings():
            if text == self.defaults.negative_prompt:  # the official default, not the user's words: a tokenizer
                # gap or truncation there is not theirs to fix
                warnings.simplefilter("ignore", Wan22Warning)
            return np.asarray(self.text_encoder.encode(text)[0], np.float32)

    def _contexts(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds):
        """(context, context_null) as [L, text_dim] float32, from strings or given embeddings (checked)."""
        def one(text, embeds, name):
            if embeds is not None:
                if text is not None and name == "prompt":
                    raise InputError("give prompt or prompt_embeds, not both")
                e = np.asarray(embeds, np.float32)
                e = e[0] if e.ndim == 3 and e.shape[0] == 1 else e
                if e.ndim != 2 or e.shape[1] != self.s2v_config.text_dim or not 1 <= e.shape[0] <= \
                        self.s2v_config.text_len:
                    raise InputError(f"{name}_embeds has shape {np.shape(embeds)}; expected [L, "
                                     f"{self.s2v_config.text_dim}] with 1 <= L <= {self.s2v_config.text_len}")
                return lambda: e
            if text is None:
                raise InputError(f"give {name} (a string) or {name}_embeds")
            if not isinstance(text, str):
                raise InputError(f"{name} is a {type(text).__name__}; S2V takes one string")
            if self.text_encoder is None:
                raise InputError(f"{name} given as text but {self.no_text_encoder_reason or 'there is no text encoder'}"
                                 f"; pass {name}_embeds instead")
            return functools.partial(self._encode_text, text)
        neg = self.defaults.negative_prompt if negative_prompt is None and negative_prompt_embeds is None \
            else negative_prompt
        return one(prompt, prompt_embeds, "prompt"), one(neg, negative_prompt_embeds, "negative_prompt")

    def __call__(self, prompt: str | None = None, image=None, audio=None, *, pose_video=None,
                 num_clips: int | None = None, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, max_area: int | None = None, infer_frames: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 shift: float | None = None, solver: str = "unipc", seed: int | None = None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, init_first_frame: bool = False,
                 audio_sample_rate: int = SAMPLE_RATE, output_type: str = "video",
                 progress: bool = True, check_memory: bool = True) -> PipelineOutput:
        """Generates one video, clip after clip, as long as the audio (or num_clips clips).

        Every argument is checked (and the image, audio and pose video read) before any model runs.

        Args:
          prompt: the text (or prompt_embeds [L, text_dim]); negative_prompt: default the official S2V one.
          image: the reference image: a path, PIL image or [H, W, 3] array.
          audio: a path (wav, flac, ogg, mp3...) or mono float samples at audio_sample_rate Hz; at least one
            clip long (infer_frames / 16 s).
          pose_video: a path or [T, H, W, 3] uint8 frames (16 fps) of a DW-pose sequence, or None.
          num_clips: clips to generate (default, and at most: as many as the audio covers).
          height, width: the output size, both multiples of 64; default: from the image and max_area as the
            official code (max_area default 1280 * 720).
          infer_frames: frames per clip, a multiple of 4 (default 80). num_inference_steps (40), guidance_scale
            (4.5; > 1 adds the unconditional pass), shift (3.0), solver ("unipc" or "dpm++"): per clip.
          seed: clip r draws its noise from jax.random.key(seed + r) (torch's RNG cannot be reproduced); default 0.
          latents: explicit initial noise [R, 16, infer_frames / 4, H / 8, W / 8] instead of the seed's.
          init_first_frame: start from the reference image (official --start_from_ref).
          output_type: "video" (uint8), "np" (float32 in [0, 1]) or "pil". progress: status lines.
          check_memory: refuse a request whose shapes alone need more memory than is free (`check_memory`).
        Returns:
          PipelineOutput: videos=[Video] (its audio track the input audio, trimmed to the video when saved),
          frames [1, T, H, W, 3], video [1, 3, T, H, W], latents [R, 16, F, h, w] (per clip), timesteps,
          cond_latent (the reference latent [16, 1, h, w]), denoise_s. T = R * infer_frames - 3 (clip 0 drops 3
          frames) unless init_first_frame.
        """
        d = self.defaults
        infer = positive_int(d.infer_frames if infer_frames is None else infer_frames, "infer_frames", 4)
        steps = positive_int(d.sample_steps if num_inference_steps is None else num_inference_steps,
                              "num_inference_steps")
        scale = positive_float(d.guide_scale if guidance_scale is None else guidance_scale, "guidance_scale")
        shift = positive_float(d.sample_shift if shift is None else shift, "shift")
        if solver not in SOLVERS:
            raise InputError(f"solver={solver!r}: S2V runs {SOLVERS} (the official choices)")
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
            raise InputError(f"seed={seed!r}: expected an integer in [0, 2**32)")
        if output_type not in ("video", "np", "pil"):
            raise InputError(f"output_type={output_type!r}: expected 'video', 'np' or 'pil' (each clip is decoded "
                             "to condition the next, so there is no latent-only output)")
        if num_clips is not None:
            num_clips = positive_int(num_clips, "num_clips")
        get_context, get_null = self._contexts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        ref = read_image(image)
        height, width = output_size(ref.shape[:2], height, width, d.max_area if max_area is None else max_area)
        wave = read_waveform(audio, audio_sample_rate)
        clip_s = infer / d.fps
        if len(wave) < clip_s * SAMPLE_RATE:
            raise InputError(f"audio is {len(wave) / SAMPLE_RATE:.2f} s long, shorter than one clip "
                             f"({infer} frames at {d.fps} fps = {clip_s:.2f} s); use a longer track or fewer "
                             "infer_frames")
        audio_model = self.audio_encoder
        available = clip_count(len(wave), infer, audio_model.frames, d.fps)
        repeats = available if num_clips is None else min(num_clips, available)
        pose = None if pose_video is None else read_pose_video(pose_video, d.fps)
        shape = (repeats, self.s2v_config.in_dim, infer // 4, height // 8, width // 8)
        if latents is not None:
            latents = np.asarray(latents, np.float32)
            if latents.shape != shape:
                raise InputError(f"latents has shape {latents.shape}; expected {shape} ({repeats} clip(s))")
        if check_memory:
            self.check_memory(repeats, infer, height, width)

        # inputs at the output size (official Resize(min(H, W)) + CenterCrop)
        ref = resize_crop(ref, height, width)
        if pose is not None:
            pose = np.stack([resize_crop(f, height, width) for f in pose[:repeats * infer]])
        context, context_null = get_context(), get_null()
        with stage("encoding audio (wav2vec2)", progress):
            audio_emb, _ = audio_features(audio_model, wave, infer, fps=d.fps, last_normed=self.audio_last_normed)
        if latents is None:
            latents = np.stack([np.asarray(jax.random.normal(jax.random.key(int(seed) + r), shape[1:], jnp.float32))
                                for r in range(repeats)])
        say = (lambda r, n: print(f"clip {r + 1}/{n}", flush=True)) if progress else None  # noqa: E731
        t0 = time.perf_counter()
        clips = generate_clips(self.dit, self.vae, context=context, context_null=context_null, ref_image=ref,
                               audio_emb=audio_emb, noise=latents, pose_video=pose, infer_frames=infer,
                               motion_frames=d.motion_frames, steps=steps, shift=shift, guide_scale=scale,
                               solver=solver, drop_first_motion=d.drop_first_motion,
                               init_first_frame=bool(init_first_frame), num_train_timesteps=d.num_train_timesteps,
                               on_clip=say, mesh=self.mesh)
        denoise_s = time.perf_counter() - t0
        frames = to_uint8(clips.video)[None]
        audio_track = audio if isinstance(audio, (str, os.PathLike)) else wave
        return PipelineOutput(
            videos=[Video(frames[0], fps=d.fps, audio=audio_track, audio_rate=SAMPLE_RATE)],
            frames=as_output(frames, output_type), video=clips.video[None], latents=clips.latents,
            timesteps=clips.timesteps, cond_latent=clips.ref_latents, denoise_s=denoise_s)


__all__ = ["S2VClips", "S2VDefaults", "S2VPipeline", "TASK", "audio_features", "generate_clips",
           "is_s2v_folder"]
