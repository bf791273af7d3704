"""Sample videos during a training run: a few held-out captions generated with the current weights at every
evaluation, decoded and written as mp4 (out_dir/samples/step_000250_0.mp4, captions in samples/prompts.txt), so
a run can be watched, not only its loss read.

Each sample is sampled with the same noise at every evaluation (its seed is its number), with classifier-free
guidance against the empty prompt, by the pipeline's sampling loop (samplers/loop.py). The weights are the
training params (not the EMA copy) at that step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.samplers.guidance import ClassifierFreeGuidance
from wan22_jax.samplers.loop import sample
from wan22_jax.samplers.registry import get_sampler
from wan22_jax.samplers.schedule import make_schedule
from wan22_jax.training.cache import CachedDataset
from wan22_jax.video import Video, to_uint8

SAMPLES_DIR = "samples"


@dataclasses.dataclass(frozen=True)
class Preview:
    """One sample video to render: its caption, latent shape [z, F, h, w] and text inputs without a batch axis:
    {"context", "null_context": [L, D]} (a frozen encoder's) or {"ids", "mask", "null_ids", "null_mask": [L]}
    (an encoder trained with the DiT)."""

    caption: str
    shape: tuple[int, ...]
    text: dict


def batch_previews(batch: dict, captions: list[str], count: int) -> list[Preview]:
    """The first `count` samples of an evaluation batch ({"latents": [B, z, F, h, w], text keys: [B, ...]})."""
    n = min(count, len(captions))
    return [Preview(captions[i], tuple(np.shape(batch["latents"])[1:]),
                    {k: np.asarray(v[i]) for k, v in batch.items() if k != "latents"}) for i in range(n)]


def cache_previews(data: CachedDataset, text: str, count: int) -> list[Preview]:
    """`count` samples of a cache split, one bucket after another (the first sample of each, then the second...),
    so the sample videos show every bucket's shape."""
    names = ("context",) if text == "context" else ("ids", "mask")
    null = data.null()
    order = sorted(range(len(data)), key=lambda i: (data.buckets[:i].count(data.buckets[i]), i))
    out = []
    for i in order[:count]:
        s = data.load(i)
        fields = {**{k: s[k] for k in names}, **{f"null_{k}": null[k] for k in names}}
        out.append(Preview(data.records[i]["caption"], tuple(s["latents"].shape), fields))
    return out


class PreviewRenderer:
    """Generates and writes the sample videos of a run.

    Args:
      graphdef: the DiT's graph; params_fn(params, frozen) -> its state (as the train step merges it).
      text_fn: (params, ids [B, L], mask [B, L]) -> context, for an encoder trained with the DiT; else None.
      previews: the samples (`batch_previews` / `cache_previews`).
      decode: latents [1, z, F, h, w] -> video [1, 3, T, H, W] in [-1, 1].
      steps, guidance, shift: sampling steps, guide scale, schedule shift.
      fps: frame rate of the written files.
    """

    def __init__(self, graphdef, params_fn, text_fn, previews: list[Preview], *, decode: Callable, steps: int = 20,
                 guidance: float = 4.0, shift: float = 1.0, fps: int = 16, solver: str = "unipc"):
        self.previews, self.decode, self.fps = previews, decode, fps
        schedule = make_schedule(steps, shift=shift)
        sampler = get_sampler(solver)
        cfg = ClassifierFreeGuidance(scale=guidance)

        @jax.jit
        def generate(params, frozen, text, x_T):
            dit = nnx.merge(graphdef, params_fn(params, frozen))
            if text_fn is not None:
                context = text_fn(params, jnp.stack([text["ids"], text["null_ids"]]),
                                  jnp.stack([text["mask"], text["null_mask"]]))
            else:
                context = jnp.stack([text["context"], text["null_context"]])

            def velocity(x, t, i):
                v = dit(jnp.concatenate([x, x]), jnp.full((2, x.shape[2]), t, jnp.float32), context)
                return v[:1], v[1:]
            return sample(sampler, velocity, x_T, schedule, guidance=cfg)

        self._generate = generate

    def render(self, params, frozen, step: int, out_dir: str | Path) -> list[Path]:
        """Writes out_dir/samples/step_<step>_<i>.mp4 for each preview (and samples/prompts.txt). Returns the
        paths."""
        folder = Path(out_dir) / SAMPLES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prompts.txt").write_text("".join(f"{i}\t{p.caption}\n" for i, p in enumerate(self.previews)),
                                            encoding="utf-8")
        paths = []
        for i, p in enumerate(self.previews):
            x_T = jax.random.normal(jax.random.key(i), (1, *p.shape), jnp.float32)
            latents = self._generate(params, frozen, {k: jnp.asarray(v) for k, v in p.text.items()}, x_T)
            video = np.asarray(self.decode(latents), np.float32)[0]
            path = folder / f"step_{step:06d}_{i}.mp4"
            Video(to_uint8(video), fps=self.fps).save(path)
            paths.append(path)
        return paths


def pixel_decoder(stride: int) -> Callable:
    """The 'decoder' of pooled-pixel latents (a run without a VAE): each latent pixel repeated stride x stride."""
    return lambda latents: np.repeat(np.repeat(np.asarray(latents), stride, axis=-2), stride, axis=-1)


__all__ = ["Preview", "PreviewRenderer", "batch_previews", "cache_previews", "pixel_decoder", "SAMPLES_DIR"]
