"""Sampling a DiT trained by `training.loop` directly (no pipeline): its EMA weights from a checkpoint, the
same frozen text encoder, classifier-free guidance against the zero context the training dropped text to.
Used to evaluate prompt following (experiments/mini_world/evaluate.py) and by the LoRA experiment."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.models.dit import DiTConfig, WanModel
from wan22_jax.samplers import get_sampler, make_schedule
from wan22_jax.samplers.loop import sample
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.data import WorldConfig
from wan22_jax.training.loop import TextConfig, build_text_encoder
from wan22_jax.training.step import init_state


class TrainedModel:
    """A training run's DiT (EMA weights at the latest or a given step) with its text encoder.

    Args:
      config: the run's config dict; step: checkpoint step (None: the latest).
    """

    def __init__(self, config: dict, step: int | None = None):
        self.config = config
        self.dit_cfg = config_from_dict(DiTConfig, config["dit"], source="config dit")
        self.train_cfg = config_from_dict(TrainConfig, config.get("train", {}), source="config train")
        self.world_cfg = config_from_dict(WorldConfig, config.get("world", {}), source="config world")
        text_cfg = config_from_dict(TextConfig, config.get("text", {}), source="config text")
        out_dir = Path(config["out_dir"])
        self.text_encoder, _ = build_text_encoder(text_cfg, self.dit_cfg.text_len, out_dir / "tokenizer")
        self.graphdef, state = nnx.split(WanModel(self.dit_cfg, rngs=nnx.Rngs(0)))
        template = init_state(nnx.to_pure_dict(state), self.train_cfg)
        ckpt = TrainCheckpointer(config.get("checkpoint_dir", out_dir / "ckpt"))
        restored, _ = ckpt.restore(template, step)
        ckpt.close()
        self.step = int(restored["step"])
        use_ema = self.train_cfg.ema_decay > 0
        self.params = restored["ema"] if use_ema else restored["params"]

    def latent_shape(self) -> tuple[int, int, int, int]:
        w = self.world_cfg
        s = w.pixel_stride
        return (self.dit_cfg.out_dim, w.frames, w.height // s, w.width // s)

    def generate(self, prompts: Sequence[str], *, seed: int = 0, steps: int = 20, guidance: float = 4.0,
                 shift: float | None = None, params=None) -> np.ndarray:
        """Videos [B, 3, T, H, W] in [-1, 1] (pixel-space runs: the latents are the pooled pixels)."""
        context = self.text_encoder(list(prompts))[0].astype(jnp.float32)
        x_T = jax.random.normal(jax.random.key(seed), (len(prompts), *self.latent_shape()), jnp.float32)
        schedule = make_schedule(steps, shift=self.train_cfg.shift if shift is None else shift)
        out = _sample(self.graphdef, self.params if params is None else params, x_T, context, schedule,
                      float(guidance))
        video = np.asarray(out)
        s = self.world_cfg.pixel_stride
        if s > 1:
            video = video.repeat(s, axis=-1).repeat(s, axis=-2)
        return np.clip(video, -1, 1)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _sample(graphdef, params, x_T, context, schedule, guidance):
    model = nnx.merge(graphdef, params)
    b = x_T.shape[0]
    null = jnp.zeros_like(context)

    def velocity(x, t, i):
        tt = jnp.broadcast_to(t, (2 * b,))
        v = model(jnp.concatenate([x, x]), tt, jnp.concatenate([context, null]))
        cond, uncond = v[:b], v[b:]
        return uncond + guidance * (cond - uncond)

    return sample(get_sampler("euler"), velocity, x_T, schedule)
