"""The speech-to-video DiT, S2V-14B (official `WanModel_S2V` in wan/modules/s2v/model_s2v.py).

It is the Wan DiT (models/dit.py, whose embeddings, blocks, head and text K/V it reuses) with:
* pose conditioning: `cond_encoder` (a patch embedding of the pose latents) added to the video tokens;
* extra tokens after the video tokens: the reference image's patch embedding (RoPE frame 30) and the frame-pack
  motion tokens (models/s2v/motioner.py, negative frames), all attended to by self-attention;
* a token-type embedding `trainable_cond_mask` (0 video, 1 reference, 2 motion);
* two-segment modulation (`zero_timestep`): the video tokens are modulated by t, the other tokens by t = 0;
* audio: wav2vec2 features compressed per latent frame (audio_utils.py) and injected after the blocks of
  `audio_inject_layers` (AdaLN + per-frame audio cross-attention on the video tokens).
The blocks stay stacked and scanned; an injection is a `lax.cond` inside the scan picking its injector by index.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.dit import DiTConfig, WanAttentionBlock, WanModel
from wan22_jax.models.layers import normal_init, param, zeros_init
from wan22_jax.models.s2v.audio_utils import AudioInjector, CausalAudioEncoder, injector_ids
from wan22_jax.models.s2v.motioner import FramePackMotioner
from wan22_jax.models.s2v.s2v_utils import conv_patches, grid_positions, rope_tables_at, sampled
from wan22_jax.ops import XLA, Kernels
from wan22_jax.sharding import shard

REF_FRAME = 30  # the reference image's RoPE frame (official literal)
AUDIO_LAYERS = 25  # wav2vec2 hidden states mixed by the audio encoder (official literal)


@dataclasses.dataclass(frozen=True, kw_only=True)
class S2VConfig:
    """`WanModel_S2V` constructor arguments: the DiT fields plus the S2V ones (official config.json)."""

    model_type: str = "s2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 16
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 40
    num_layers: int = 40
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    cond_dim: int = 16
    audio_dim: int = 1024
    num_audio_token: int = 4
    enable_adain: bool = True
    adain_mode: str = "attn_norm"
    audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    zero_init: bool = True  # only zeroes weights at construction: no effect on a loaded model
    zero_timestep: bool = True
    enable_motioner: bool = False
    add_last_motion: bool = True
    enable_tsm: bool = False  # motioner only
    trainable_token_pos_emb: bool = False  # motioner only
    motion_token_num: int = 1024  # motioner only
    enable_framepack: bool = True
    framepack_drop_mode: str = "padd"

    def __post_init__(self):
        if self.model_type != "s2v":
            raise ConfigError(f"S2VConfig.model_type must be 's2v', got {self.model_type!r}")
        self.dit  # validates the DiT fields  # noqa: B018
        for name in ("audio_dim", "num_audio_token"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"S2VConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.cond_dim, int) or isinstance(self.cond_dim, bool) or self.cond_dim < 1:
            # the official forward always runs cond_encoder, which cond_dim=0 does not build
            raise ConfigError(f"S2VConfig.cond_dim must be a positive integer (the official forward needs the "
                              f"pose encoder), got {self.cond_dim!r}")
        if not isinstance(self.audio_inject_layers, tuple) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.audio_inject_layers):
            raise ConfigError(f"S2VConfig.audio_inject_layers must be a list of block indices, got "
                              f"{self.audio_inject_layers!r}")
        if self.dim % 4:
            raise ConfigError(f"S2VConfig.dim {self.dim} must be divisible by 4 (the audio encoder's widths)")
        if self.enable_motioner:
            raise ConfigError("S2VConfig.enable_motioner=true (the MotionerTransformers variant) is not "
                              "implemented; S2V-14B uses enable_framepack")
        if not self.enable_framepack:
            raise ConfigError("S2VConfig.enable_framepack=false (plain motion-frame tokens) is not implemented; "
                              "S2V-14B uses enable_framepack=true")
        if self.framepack_drop_mode not in ("padd", "drop"):
            raise ConfigError(f"S2VConfig.framepack_drop_mode must be 'padd' or 'drop', got "
                              f"{self.framepack_drop_mode!r}")
        if self.adain_mode != "attn_norm":
            raise ConfigError(f"S2VConfig.adain_mode {self.adain_mode!r} is not implemented (only 'attn_norm')")
        for name in ("enable_adain", "zero_timestep", "add_last_motion", "zero_init"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"S2VConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not self.zero_timestep:
            # the official blocks read the segment index with `.item()`, which zero_timestep=false leaves an int
            raise ConfigError("S2VConfig.zero_timestep=false cannot run in the official model and is not "
                              "implemented")

    @property
    def dit(self) -> DiTConfig:
        """The shared DiT part (embeddings, blocks, head)."""
        names = {f.name for f in dataclasses.fields(DiTConfig)}
        return DiTConfig(**{k: getattr(self, k) for k in names})

    @property
    def injectors(self) -> tuple[int, dict[int, int]]:
        return injector_ids(self.num_layers, self.audio_inject_layers)


S2V_PRESETS: dict[str, S2VConfig] = {
    "s2v-14B": S2VConfig(),  # wan/configs/wan_s2v_14B.py + the model defaults (num_audio_token 4, text_dim 4096)
    "tiny-s2v": S2VConfig(text_len=12, dim=32, ffn_dim=64, freq_dim=32, text_dim=24, num_heads=2, num_layers=3,
                          audio_dim=16, audio_inject_layers=(0, 2)),
}


def two_segments(x, seg: int, fn):
    """fn(x[:, :seg], 0) ++ fn(x[:, seg:], 1) along tokens: the official per-segment modulation."""
    return jnp.concatenate([fn(x[:, :seg], 0), fn(x[:, seg:], 1)], axis=1)


def s2v_block(block: WanAttentionBlock, x, e0, seg: int, cos, sin, kv):
    """One `WanS2VAttentionBlock` with our block's weights: the T2V block, its modulation in two token segments.

    Args:
      x: [B, L, D] fp32 residual stream; e0: [B, 2, 6, D] fp32 (segment 0 = tokens [0, seg), 1 = the rest).
    Returns:
      [B, L, D].
    """
    e = block.modulation[...].astype(jnp.float32)[None] + e0  # [B, 2, 6, D]
    mod = lambda i: (lambda h, s: h * (1 + e[:, s, i + 1, None]) + e[:, s, i, None])  # noqa: E731
    gate = lambda i: (lambda h, s: h * e[:, s, i, None])  # noqa: E731

    h = two_segments(block.norm1(x).astype(jnp.float32), seg, mod(0))
    y = block.self_attn(h, cos, sin, None)
    x = x + two_segments(y.astype(jnp.float32), seg, gate(2))
    x = x + block.cross_attn(block.norm3(x), kv)
    h = two_segments(block.norm2(x).astype(jnp.float32), seg, mod(3))
    y = block.ffn["2"](jax.nn.gelu(shard(block.ffn["0"](h), ("batch", "tokens", "mlp")), approximate=True))
    return x + two_segments(y.astype(jnp.float32), seg, gate(5))


class WanModelS2V(WanModel):
    """The S2V DiT. Call with channels-first latents, like the official model (stacked batches).

    Args (of __call__):
      x: [B, 16, F, H, W] noisy latent; t: [B] timesteps; context: [B, Lc, text_dim] (zero-padded to text_len).
      ref_latents: [B, 16, 1, H, W] reference image latent; motion_latents: [B, 16, Tm, H, W] previous frames.
      cond_states: [B, cond_dim, F, H, W] pose latents.
      audio_input: [B, 25, audio_dim, 4F] per-video-frame wav2vec2 features.
      motion_frames: (pixel, latent) motion frames: 73 copies of audio frame 0 are prepended and the first 19
        compressed audio frames dropped. add_last_motion: 0-2 (times config.add_last_motion), what the frame
        packer keeps. drop_motion_frames: no motion tokens (the first clip of a generation).
      context_kv: precomputed `encode_context(context)`.
      return_intermediates: also return {"audio_emb_local", "audio_emb_global", "tokens", "blocks"}.
    Returns:
      [B, out_dim, F, H, W] fp32 velocity (and the intermediates dict).
    """

    def __init__(self, cfg: S2VConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 kernels: Kernels = XLA, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        super().__init__(cfg.dit, dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.s2v = cfg
        d = cfg.dim
        mods = dict(dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)
        self.cond_encoder = nnx.Dict({
            "kernel": param(rngs, normal_init(0.02), (*cfg.patch_size, cfg.cond_dim, d),
                            (None, None, None, None, "embed"), param_dtype),
            "bias": param(rngs, zeros_init, (d,), ("embed",), param_dtype)})
        self.trainable_cond_mask = nnx.Dict({"weight": param(rngs, normal_init(1.0), (3, d), (None, "embed"),
                                                             param_dtype)})
        self.casual_audio_encoder = CausalAudioEncoder(cfg.audio_dim, d, cfg.num_audio_token, cfg.enable_adain,
                                                       AUDIO_LAYERS, **mods)
        self.audio_injector = AudioInjector(d, cfg.num_heads, cfg.injectors[0], cfg.enable_adain, **mods)
        self.frame_packer = FramePackMotioner(d, cfg.framepack_drop_mode, **mods)

    # -------------------------------------------------------------------------------- pieces
    def encode_audio(self, audio_input, motion_frames=(73, 19)):
        """[B, 25, audio_dim, T] -> (local [B, T', n + 1, D], global [B, T', 1, D] or None), the first
        motion_frames[1] compressed frames (those of the prepended copies) dropped."""
        cfg = self.s2v
        if audio_input.ndim != 4 or audio_input.shape[1:3] != (AUDIO_LAYERS, cfg.audio_dim):
            raise InputError(f"audio_input has shape {audio_input.shape}; expected "
                             f"[B, {AUDIO_LAYERS}, {cfg.audio_dim}, T]")
        pad = jnp.repeat(audio_input[..., :1], motion_frames[0], axis=-1)
        local, glob = self.casual_audio_encoder(jnp.concatenate([pad, audio_input], axis=-1))
        drop = motion_frames[1]
        return local[:, drop:], (None if glob is None else glob[:, drop:])

    def _validate(self, x, ref_latents, motion_latents, cond_states, audio_input):
        cfg = self.s2v
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise InputError(f"x has shape {x.shape}; expected [B, {cfg.in_dim}, F, H, W]")
        b, _, f, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        if f % pt or h % ph or w % pw:
            raise InputError(f"latent grid {(f, h, w)} is not divisible by patch_size {cfg.patch_size}")
        if h < 8 or w < 8:
            # the official frame packer always runs its (4, 8, 8) patch (even when the motion tokens are dropped)
            raise InputError(f"latent height and width must be at least 8 (64 pixels) for the frame packer's "
                             f"(4, 8, 8) patches, got {(h, w)}")
        want = {"ref_latents": (b, cfg.in_dim, 1, h, w), "cond_states": (b, cfg.cond_dim, f, h, w)}
        for name, arr in (("ref_latents", ref_latents), ("cond_states", cond_states)):
            if arr is None or tuple(arr.shape) != want[name]:
                raise InputError(f"{name} has shape {None if arr is None else tuple(arr.shape)}; expected "
                                 f"{list(want[name])} (x is {list(x.shape)})")
        if motion_latents.ndim != 5 or motion_latents.shape[0] != b or motion_latents.shape[3:] != (h, w):
            raise InputError(f"motion_latents has shape {motion_latents.shape}; expected [{b}, 16, Tm, {h}, {w}]")
        if audio_input.ndim != 4 or audio_input.shape[0] != b or audio_input.shape[-1] != 4 * f:
            raise InputError(f"audio_input has shape {audio_input.shape}; expected [{b}, {AUDIO_LAYERS}, "
                             f"{cfg.audio_dim}, {4 * f}] (4 audio frames per latent frame)")

    def positions(self, grid, add_last_motion: int, drop_motion_frames: bool) -> tuple[np.ndarray, int, int]:
        """(RoPE positions [L, 3] of video + reference + motion tokens, video tokens, reference tokens)."""
        f, h, w = grid
        video = grid_positions(range(f), range(h), range(w))
        ref = grid_positions([REF_FRAME], sampled(0, h - 1, h), sampled(0, w - 1, w))
        parts = [video, ref]
        if not drop_motion_frames:
            ph, pw = self.s2v.patch_size[1:]
            parts.append(self.frame_packer.positions(h * ph, w * pw, add_last_motion))
        return np.concatenate(parts, axis=0), len(video), len(ref)

    # -------------------------------------------------------------------------------- forward
    def __call__(self, x, t, context=None, *, ref_latents, motion_latents, cond_states, audio_input,
                 motion_frames=(73, 19), add_last_motion: int = 2, drop_motion_frames: bool = False,
                 context_kv=None, return_intermediates: bool = False):
        cfg = self.s2v
        self._validate(x, ref_latents, motion_latents, cond_states, audio_input)
        add_last_motion = int(cfg.add_last_motion) * int(add_last_motion)
        local, glob = self.encode_audio(audio_input, motion_frames)
        b, _, f, _, _ = x.shape
        if local.shape[1] != f // cfg.patch_size[0]:
            raise InputError(f"audio_input gives {local.shape[1]} latent frames of audio after dropping "
                             f"motion_frames[1]={motion_frames[1]}; the latent has {f}")

        mask = self.trainable_cond_mask["weight"][...].astype(jnp.float32)
        video = self.patchify(x)
        grid = tuple(n // p for n, p in zip(x.shape[2:], cfg.patch_size))
        video = video + conv_patches(cond_states, self.cond_encoder["kernel"][...], self.cond_encoder["bias"][...],
                                     dtype=self.dtype, impl=self.kernels.matmul)[0]
        parts = [video.astype(jnp.float32) + mask[0], self.patchify(ref_latents).astype(jnp.float32) + mask[1]]
        if not drop_motion_frames:
            motion, _ = self.frame_packer(motion_latents, add_last_motion)
            parts.append(motion.astype(jnp.float32) + mask[2])
        h = shard(jnp.concatenate(parts, axis=1), ("batch", "tokens", "embed"))
        pos, n_video, _ = self.positions(grid, add_last_motion, drop_motion_frames)
        cos, sin = rope_tables_at(pos, self.cfg.head_dim)

        e, e0 = self.embed_time(t, grid)  # [B, 1, D], [B, 1, 6, D]
        e0_zero = self.embed_time(jnp.zeros_like(jnp.asarray(t, jnp.float32)), grid)[1]
        e0 = jnp.concatenate([e0, e0_zero], axis=1)  # [B, 2, 6, D]: video tokens t, the others t = 0
        if context_kv is None:
            if context is None:
                raise InputError("pass context [B, Lc, text_dim] or precomputed context_kv")
            context_kv = self.encode_context(context)

        count, ids = cfg.injectors
        inject_at = np.full((cfg.num_layers,), -1, np.int32)
        for block, k in ids.items():
            inject_at[block] = k
        graphdef, state = nnx.split(self.blocks)
        injector = self.audio_injector

        def body(carry, layer):
            layer_state, k, v, inj = layer
            out = s2v_block(nnx.merge(graphdef, layer_state), carry, e0, n_video, cos, sin, (k, v))
            if count:
                out = jax.lax.cond(
                    inj >= 0,
                    lambda o: jnp.concatenate([injector.inject(inj, o[:, :n_video], local, glob),
                                               o[:, n_video:]], axis=1),
                    lambda o: o, out)
            out = shard(out, ("batch", "tokens", "embed"))
            return out, (out if return_intermediates else None)

        h_out, per_block = jax.lax.scan(body, h, (state, *context_kv, jnp.asarray(inject_at)))
        out = self.unpatchify(self.head(h_out[:, :n_video], e), grid).astype(jnp.float32)
        if not return_intermediates:
            return out
        return out, {"audio_emb_local": local, "audio_emb_global": glob, "tokens": h, "blocks": per_block}


# ------------------------------------------------------------------------------------------------ constructors
def abstract_s2v(cfg: S2VConfig, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """(graphdef, abstract state) of a WanModelS2V without allocating any parameter."""
    return nnx.split(nnx.eval_shape(lambda: WanModelS2V(cfg, dtype=dtype, param_dtype=param_dtype)))
