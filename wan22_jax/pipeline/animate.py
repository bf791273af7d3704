"""Animate-14B generation (official `WanAnimate.generate` in wan/animate.py), from decoded frames to video.

The source video is cut into clips of `clip_len` = 4k + 1 frames overlapping by `refert_num` frames (the frame
lists first extended by ping-pong repetition so that the clips tile them exactly). For clip r:

* `pose_latents` = VAE(pose frames), the reference latent = VAE(reference image), `clip_context` = CLIP(reference);
* y = [ones(4) | ref latent] for the reference slot, then [mask (4 ch, i2v layout) | VAE(frames)] where the
  frames are zeros (animation, clip 0), the last `refert_num` generated frames then zeros (animation, r > 0), or
  the background video with the last generated frames in front for r > 0 (replacement; the mask is 1 - the
  character mask, nearest-downsampled 8x, and 1 on the carried frames);
* the DiT denoises [16, lat_t + 1, h, w] noise with the sampler (DPM++ officially), with guidance when
  guide_scale > 1 (uncond: the negative prompt and face crops replaced by -1);
* the latents without the reference slot are decoded; clips r > 0 drop their first `refert_num` frames.

Text contexts are inputs (umT5 output per prompt, trimmed), as the caller may cache them; the noise of every clip
is an input too ([R, 16, lat_t + 1, h, w]: the official draws it with torch's generator).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.errors import InputError
from wan22_jax.models import vae as vae_ops
from wan22_jax.models.animate.clip import CLIPVisionEncoder
from wan22_jax.models.animate.model_animate import WanAnimateModel
from wan22_jax.samplers.guidance import cfg as guided
from wan22_jax.samplers.loop import init_carry, scan_steps, step_rows
from wan22_jax.samplers.registry import get_sampler
from wan22_jax.samplers.schedule import official_schedule
from wan22_jax.sharding.loading import vae_decode

VAE_STRIDE = (4, 8, 8)


@dataclasses.dataclass(frozen=True)
class AnimateResult:
    """Per-clip tensors (leading axis R = clips) and the video [3, T, H, W] in [-1, 1]."""

    clip_context: np.ndarray  # [257, vision_dim]
    y: np.ndarray  # [R, 20, lat_t + 1, h, w]
    pose_latents: np.ndarray  # [R, 16, lat_t, h, w]
    timesteps: np.ndarray  # [steps] int64
    latents_per_step: np.ndarray | None  # [R, steps, 16, lat_t + 1, h, w] (None without trajectory)
    noise_pred_per_step: np.ndarray | None  # [R, steps, 16, lat_t + 1, h, w]
    latents: np.ndarray  # [R, 16, lat_t + 1, h, w]
    video: np.ndarray  # [3, T, H, W]


# ------------------------------------------------------------------------------------------------ frames
def valid_length(real_len: int, clip_len: int, overlap: int) -> int:
    """The frame count the clips tile exactly (official `get_valid_len`)."""
    step = clip_len - overlap
    rest = (real_len - overlap) % step
    return real_len + (0 if rest == 0 else step - rest)


def ping_pong(frames: np.ndarray, target_len: int) -> np.ndarray:
    """Extends [T, ...] to target_len frames by walking forth and back (official `inputs_padding`)."""
    idx, flip, out = 0, False, []
    while len(out) < target_len:
        out.append(idx)
        idx += -1 if flip else 1
        if idx == 0 or idx == len(frames) - 1:
            flip = not flip
    return frames[np.asarray(out[:target_len], np.int64)]


def i2v_mask(mask: np.ndarray, keep: int) -> np.ndarray:
    """[T, h, w] pixel-frame mask -> [4, (T + 3) / 4, h, w] latent mask (official `get_i2v_mask`): the first `keep`
    frames set to 1, frame 0 repeated 4x, then groups of 4 frames become the 4 channels."""
    m = np.array(mask, np.float32)
    m[:keep] = 1.0
    m = np.concatenate([np.repeat(m[:1], 4, axis=0), m[1:]], axis=0)
    t, h, w = m.shape
    return m.reshape(t // 4, 4, h, w).transpose(1, 0, 2, 3)


def _pixels(frames_uint8: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [3, T, H, W] float32 in [-1, 1] (uint8 / 127.5 - 1)."""
    return (np.asarray(frames_uint8, np.float64) / 127.5 - 1.0).astype(np.float32).transpose(3, 0, 1, 2)


def noise_shape(n_clips: int, clip_len: int, height: int, width: int) -> tuple[int, ...]:
    """[R, 16, clip_len // 4 + 2, H / 8, W / 8]: the initial latents of R clips (the reference slot included)."""
    return (n_clips, 16, clip_len // 4 + 2, height // 8, width // 8)


def _frames(video, name: str, t: int | None, hw: tuple[int, int] | None, channels: tuple[int, ...] = (3,)):
    """Checks one [T, H, W, C] uint8 video against the pose video's length and size."""
    if video is None:
        return
    ok_ndim = (video.ndim == 4 and video.shape[-1] in channels) or (channels != (3,) and video.ndim == 3)
    if not ok_ndim or video.dtype != np.uint8:
        raise InputError(f"{name} has shape {video.shape} / dtype {video.dtype}; expected [T, H, W, 3] uint8")
    if t is not None and video.shape[0] != t:
        raise InputError(f"{name} has {video.shape[0]} frames but the pose video has {t}: the official "
                         "preprocessing writes every video from the same source frames, one per pose frame")
    if hw is not None and tuple(video.shape[1:3]) != hw:
        raise InputError(f"{name} frames are {video.shape[1]}x{video.shape[2]} (HxW) but the pose frames are "
                         f"{hw[0]}x{hw[1]}")


def check_animate_inputs(ref, pose, face, bg, mask, clip_len: int, refert_num: int, face_size: int,
                         replace: bool) -> int:
    """Every input of `generate_animate` checked before any compute (one InputError naming the problem).

    Args:
      ref: [H, W, 3] uint8; pose: [T, H, W, 3] uint8; face: [T, S, S, 3] uint8 (S = face_size); bg: [T, H, W, 3]
        uint8 or None; mask: [T, H, W] or [T, H, W, C] uint8 or None (both needed for replacement).
      clip_len: frames per clip (4k + 1); refert_num: 1 or 5; replace: replacement mode.
    Returns:
      R, the number of clips.
    """
    if isinstance(clip_len, bool) or not isinstance(clip_len, (int, np.integer)) or clip_len < 5 or (clip_len - 1) % 4:
        raise InputError(f"clip_len must be 4k + 1 >= 5, got {clip_len}")
    if refert_num not in (1, 5) or isinstance(refert_num, bool):
        raise InputError(f"refert_num must be 1 or 5 (the official choices), got {refert_num}")
    if refert_num >= clip_len:
        raise InputError(f"refert_num {refert_num} must be smaller than clip_len {clip_len}")
    if pose.ndim != 4 or pose.shape[-1] != 3 or pose.dtype != np.uint8:
        raise InputError(f"pose video has shape {pose.shape} / dtype {pose.dtype}; expected [T, H, W, 3] uint8")
    t, h, w, _ = pose.shape
    if t < clip_len:
        raise InputError(f"pose video has {t} frames, fewer than one clip of {clip_len}: give a longer video or a "
                         f"shorter clip (clip_len / --frames 4k + 1 <= {t})")
    if h % 16 or w % 16:
        raise InputError(f"frames are {h}x{w}; height and width must be multiples of 16 (VAE 8 x patch 2)")
    if ref.shape != (h, w, 3) or ref.dtype != np.uint8:
        raise InputError(f"reference image has shape {ref.shape} / dtype {ref.dtype}; expected {(h, w, 3)} uint8 "
                         "(resize / pad it to the pose frames first)")
    if face.ndim != 4 or face.shape[1:] != (face_size, face_size, 3) or face.dtype != np.uint8:
        raise InputError(f"face video has shape {face.shape}; expected {(t, face_size, face_size, 3)} uint8 "
                         f"({face_size}x{face_size} face crops, one per pose frame)")
    _frames(face, "face video", t, None)
    if replace:
        for name, v in (("background video", bg), ("mask video", mask)):
            if v is None:
                raise InputError(f"{name} has shape None; replacement needs the background and mask videos "
                                 "(src_bg.mp4, src_mask.mp4 of the official preprocessing)")
        _frames(bg, "background video", t, (h, w))
        _frames(mask, "mask video", t, (h, w), channels=(1, 3))
    return (valid_length(t, clip_len, refert_num) - refert_num) // (clip_len - refert_num)


def _check(ref, pose, face, bg, mask, noise, clip_len, refert_num, face_size, replace):
    n_clips = check_animate_inputs(ref, pose, face, bg, mask, clip_len, refert_num, face_size, replace)
    t, h, w = pose.shape[:3]
    want = noise_shape(n_clips, clip_len, h, w)
    if noise.shape != want:
        raise InputError(f"noise has shape {noise.shape}; expected {want} ({n_clips} clips of "
                         f"{clip_len // 4 + 2} latent frames)")
    return n_clips


# ------------------------------------------------------------------------------------------------ denoise
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _denoise(graphdef, sampler, with_guidance, trajectory, state, x_T, rows, kv, kv_null, y, pose, face, face_null,
             scale):
    model = nnx.merge(graphdef, state)

    def velocity(x, t, i):
        tt = jnp.reshape(t, (1,)).astype(jnp.float32)
        cond = model(x, tt, context_kv=kv, y=y, pose_latents=pose, face_pixel_values=face)
        if not with_guidance:
            return cond
        uncond = model(x, tt, context_kv=kv_null, y=y, pose_latents=pose, face_pixel_values=face_null)
        return guided(cond, uncond, scale)

    carry, traj = scan_steps(sampler, velocity, init_carry(sampler, x_T), rows, return_trajectory=trajectory)
    return carry.state.x, traj


@functools.partial(jax.jit, static_argnums=0)
def _encode_context(graphdef, state, context, clip_fea):
    return nnx.merge(graphdef, state).encode_context(context, clip_fea)


@functools.partial(jax.jit, static_argnums=0)
def _clip(graphdef, state, images):
    return nnx.merge(graphdef, state)(images)


def generate_animate(dit: WanAnimateModel, vae, clip: CLIPVisionEncoder, *, context: np.ndarray,
                     context_null: np.ndarray, ref_image: np.ndarray, pose_video: np.ndarray,
                     face_video: np.ndarray, noise: np.ndarray, bg_video: np.ndarray | None = None,
                     mask_video: np.ndarray | None = None, replace: bool = False, clip_len: int = 77,
                     refert_num: int = 1, steps: int = 20, shift: float = 5.0, guide_scale: float = 1.0,
                     solver: str = "dpm++", trajectory: bool = True, mesh=None) -> AnimateResult:
    """Runs `WanAnimate.generate` (fp32 or the models' dtypes) on decoded inputs.

    Args:
      dit: the Animate DiT (with the relighting LoRA merged for replacement, as officially).
      vae: the Wan2.1 VAE (`load_vae`); clip: the CLIP image encoder.
      context, context_null: [Lp, text_dim], [Ln, text_dim] umT5 outputs of the prompt and negative prompt.
      ref_image: [H, W, 3] uint8; pose_video: [T, H, W, 3] uint8; face_video: [T, S, S, 3] uint8 face crops.
      noise: [R, 16, clip_len // 4 + 2, H / 8, W / 8] initial latents of the R clips.
      bg_video: [T, H, W, 3] uint8, mask_video: [T, H, W(, C)] 0/255 (channel 0 used): replacement inputs.
      replace: replacement mode (else animation). clip_len: frames per clip (4k + 1). refert_num: 1 or 5.
      steps, shift, solver: the sampler and its schedule. guide_scale: CFG scale (guidance only when > 1).
      trajectory: keep every step's latents and model output (False: those two fields are None, which saves
        2 x steps latents per clip of host memory at full size).
      mesh: the mesh the models are sharded over (`AnimatePipeline.sharded`), or None: clips decode split on rows.
    Returns:
      AnimateResult.
    """
    ref_image, pose_video, face_video = (np.asarray(a) for a in (ref_image, pose_video, face_video))
    bg_video = None if bg_video is None else np.asarray(bg_video)
    noise = np.asarray(noise, np.float32)
    if mask_video is not None and np.asarray(mask_video).ndim == 4:
        mask_video = np.asarray(mask_video)[..., 0]
    n_clips = _check(ref_image, pose_video, face_video, bg_video, mask_video, noise, clip_len, refert_num,
                     dit.cfg.motion_encoder_size, replace)
    real_len, (h, w) = pose_video.shape[0], pose_video.shape[1:3]
    lh, lw = h // 8, w // 8
    target = valid_length(real_len, clip_len, refert_num)
    pose_all, face_all = ping_pong(pose_video, target), ping_pong(face_video, target)
    if replace:
        bg_all = ping_pong(np.asarray(bg_video), target)
        mask_all = ping_pong(np.asarray(mask_video, np.float64) / 255.0, target)

    vg, vs = nnx.split(vae)
    dg, ds = nnx.split(dit)
    ref = _pixels(ref_image[None])  # [3, 1, H, W]
    ref_latent = np.asarray(vae_ops.encode(vg, vs, jnp.asarray(ref[None])))[0]  # [16, 1, h, w]
    y_ref = np.concatenate([np.ones((4, 1, lh, lw), np.float32), ref_latent])
    clip_context = _clip(*nnx.split(clip), jnp.asarray(ref[:, 0][None]))  # [1, 257, vision_dim]
    kv = _encode_context(dg, ds, jnp.asarray(context, jnp.float32)[None], clip_context)
    kv_null = _encode_context(dg, ds, jnp.asarray(context_null, jnp.float32)[None], clip_context)

    schedule = official_schedule(solver, steps, shift)
    sampler = get_sampler(solver)
    rows = step_rows(sampler.tables(schedule), jnp.float32)
    with_guidance = guide_scale > 1
    out = {k: [] for k in ("y", "pose_latents", "latents_per_step", "noise_pred_per_step", "latents")}
    frames_out, previous = [], None
    for r in range(n_clips):
        start = r * (clip_len - refert_num)
        sl = slice(start, start + clip_len)
        keep = 0 if r == 0 else refert_num
        pose_lat = np.asarray(vae_ops.encode(vg, vs, jnp.asarray(_pixels(pose_all[sl])[None])))[0]
        if replace:
            frames = _pixels(bg_all[sl])
            msk = 1.0 - mask_all[sl][:, ::8, ::8]  # nearest 8x downsampling picks pixel 8i
        else:
            frames = np.zeros((3, clip_len, h, w), np.float32)
            msk = np.zeros((clip_len, lh, lw))
        if keep:  # the official resizes these frames to (H, W) first: the identity, they have that size
            frames[:, :keep] = previous
        reft = np.asarray(vae_ops.encode(vg, vs, jnp.asarray(frames[None])))[0]
        y = np.concatenate([y_ref, np.concatenate([i2v_mask(msk, keep), reft])], axis=1)
        face = jnp.asarray(_pixels(face_all[sl])[None])
        x0, traj = _denoise(dg, sampler, with_guidance, trajectory, ds, jnp.asarray(noise[r][None]), rows, kv,
                                     kv_null, jnp.asarray(y[None]), jnp.asarray(pose_lat[None]), face,
                                     face * 0 - 1, jnp.float32(guide_scale))
        video = np.asarray(vae_decode(vg, vs, x0[:, :, 1:], mesh))[0]  # [3, clip_len, H, W], clamped
        frames_out.append(video[:, keep:])
        previous = video[:, -refert_num:]
        out["y"].append(y)
        out["pose_latents"].append(pose_lat)
        if trajectory:
            out["latents_per_step"].append(np.asarray(traj[0])[:, 0])
            out["noise_pred_per_step"].append(np.asarray(traj[1])[:, 0])
        out["latents"].append(np.asarray(x0)[0])
    return AnimateResult(clip_context=np.asarray(clip_context)[0], timesteps=np.asarray(schedule.timesteps),
                         video=np.concatenate(frames_out, axis=1)[:, :real_len],
                         **{k: np.stack(v) if v else None for k, v in out.items()})


__all__ = ["AnimateResult", "check_animate_inputs", "generate_animate", "i2v_mask", "noise_shape", "ping_pong",
           "valid_length"]
