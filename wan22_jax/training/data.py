"""Mini-world batches for the DiT: clips -> latents (frozen VAE, or average-pooled pixels) and prompts ->
context (frozen umT5) or token ids (an encoder trained with the DiT), precomputed once, then served by data
position.

`clips` clips are encoded once; sample `p` of the stream is clip `p % clips`, so a batch depends only on the
data position stored in the training state, which is what makes a resumed run see the same batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from einops import reduce

from wan22_jax.data.mini_world import MiniWorld, prompt_corpus
from wan22_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """height, width, frames: clip size; seed: stream seed; clips: how many distinct training clips;
    pixel_stride: without a VAE, latents are the video average-pooled by this factor in space (all frames
    kept): a cheap latent space for tests."""

    height: int = 64
    width: int = 64
    frames: int = 17
    seed: int = 0
    clips: int = 512
    pixel_stride: int = 4

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            low = 0 if f.name == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"world.{f.name}={v!r}: must be a whole number >= {low}")

    def world(self, split: str = "train", seed_offset: int = 0) -> MiniWorld:
        return MiniWorld(height=self.height, width=self.width, frames=self.frames, split=split,
                         seed=self.seed + seed_offset)


def pixel_latents(video: np.ndarray, stride: int) -> np.ndarray:
    """[B, 3, T, H, W] -> [B, 3, T, H/s, W/s] (mean over s x s blocks)."""
    return reduce(video, "b c t (h p) (w q) -> b c t h w", "mean", p=stride, q=stride)


class LatentData:
    """Precomputed latents and contexts of `world_cfg.clips` clips of one split.

    Args:
      world_cfg: the clips.
      encode_video: [B, 3, T, H, W] -> [B, z, F, h, w] normalised latents, or None for `pixel_latents`.
      encode_text: list of prompts -> [B, text_len, D] context (a frozen encoder); or
      tokenize: list of prompts -> (ids, mask) [B, text_len] (an encoder that trains: batches carry tokens).
      split, seed_offset: which stream (the held-out evaluation batch uses split="held_out").
      chunk: clips per encoder call.
    """

    def __init__(self, world_cfg: WorldConfig, encode_video, encode_text=None, *, tokenize=None,
                 split: str = "train", seed_offset: int = 0, chunk: int = 8, clips: int | None = None):
        if (encode_text is None) == (tokenize is None):
            raise ConfigError("LatentData needs exactly one of encode_text (frozen encoder) and tokenize")
        world = world_cfg.world(split, seed_offset)
        n = world_cfg.clips if clips is None else clips
        if n < 1:
            raise ConfigError(f"world.clips must be >= 1, got {n}")
        lat, prompts = [], []
        for start in range(0, n, chunk):
            b = world.batch(start, min(chunk, n - start))
            video = b["video"]
            lat.append(np.asarray(encode_video(jnp.asarray(video)) if encode_video is not None
                                  else pixel_latents(video, world_cfg.pixel_stride), np.float32))
            prompts += b["prompts"]
        self.latents = np.concatenate(lat)  # [N, z, F, h, w]
        self.prompts = prompts
        # every prompt of the world encoded (or tokenized) once; "" is the null condition of CFG
        corpus = sorted(set(prompt_corpus()) | {""})
        if tokenize is not None:
            ids, mask = (np.asarray(a, np.int32) for a in tokenize(corpus))
            self._text = {"ids": {p: ids[i] for i, p in enumerate(corpus)},
                          "mask": {p: mask[i] for i, p in enumerate(corpus)}}
        else:
            ctx = np.asarray(encode_text(corpus), np.float32)
            self._text = {"context": {p: ctx[i] for i, p in enumerate(corpus)}}

    def __len__(self) -> int:
        return len(self.latents)

    def batch(self, position: int, size: int, accum: int = 1) -> dict[str, jax.Array]:
        """Samples position .. position + accum*size - 1 as {"latents": [A, B, ...], "context": [A, B, L, D],
        "null_context": [A, B, L, D]}, or with tokens {"latents", "ids", "mask", "null_ids", "null_mask"}
        ([A, B, L] each)."""
        idx = (position + np.arange(accum * size)) % len(self)
        lat = self.latents[idx]
        out = {"latents": jnp.asarray(lat.reshape(accum, size, *lat.shape[1:]))}
        prompts = [self.prompts[i] for i in idx]
        for name, table in self._text.items():
            rows = np.stack([table[p] for p in prompts])
            out[name] = jnp.asarray(rows.reshape(accum, size, *rows.shape[1:]))
            out[f"null_{name}"] = jnp.asarray(np.broadcast_to(table[""], out[name].shape))
        return out
