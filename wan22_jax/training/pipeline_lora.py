"""LoRA fine-tuning of a loaded pipeline's DiT on your own clips: encode them with the pipeline's VAE and
text encoder, train adapters with the base frozen (the same jitted `train_step` as full training), then save
them (`lora.save_lora`, which `Wan22Pipeline.load_lora` reads; `wan22_jax.lora.export_lora` writes them for
ComfyUI / diffusers) or merge them into the pipeline in place (`lora.merge_into_pipeline`, any scale).

    lora, cfg = train_pipeline_lora(pipe, videos, prompts, LoraConfig(rank=4), TrainConfig(lr=3e-3, ...))
    merge_into_pipeline(pipe, {"model": (lora, cfg)})
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.errors import InputError
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.lora import LoraConfig, init_lora, lora_params_fn
from wan22_jax.training.step import init_state, make_train_step


def train_pipeline_lora(pipe, videos: np.ndarray, prompts: Sequence[str], lora_cfg: LoraConfig,
                        train_cfg: TrainConfig, *, steps: int, batch_size: int = 16, expert: str = "model",
                        log: Callable[[int, float], None] | None = None):
    """Trains a LoRA on `expert` of `pipe`.

    Args:
      videos: [N, 3, T, H, W] in [-1, 1] (T = 1 + 4k, sides multiples of the VAE stride); prompts: N captions.
      steps, batch_size: optimisation steps; samples cycle through the N clips in order.
    Returns:
      (adapters, lora_cfg): a pytree for `save_lora` / `merge_into_pipeline`.
    """
    if expert not in pipe.experts:
        raise InputError(f"no expert {expert!r} in this pipeline; experts: {sorted(pipe.experts)}")
    videos = np.asarray(videos, np.float32)
    if videos.ndim != 5 or len(videos) != len(prompts):
        raise InputError(f"videos must be [N, 3, T, H, W] with one prompt each; got {videos.shape} and "
                         f"{len(prompts)} prompts")
    latents = np.concatenate([np.asarray(pipe.vae_encode(videos[i:i + 8])) for i in range(0, len(videos), 8)])
    unique = sorted(set(prompts))
    ctx = np.asarray(pipe.encode_prompts(unique), np.float32)
    ctx_of = {p: ctx[i] for i, p in enumerate(unique)}
    context = np.stack([ctx_of[p] for p in prompts])
    null = np.asarray(pipe.encode_prompts([pipe.task.negative_prompt]), np.float32)[0]

    graphdef, state = pipe.experts[expert]
    base = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nnx.to_pure_dict(state))
    step = make_train_step(graphdef, train_cfg, lora_params_fn(lora_cfg))
    train_state = init_state(init_lora(base, lora_cfg, seed=train_cfg.seed), train_cfg)
    n = len(latents)
    for i in range(steps):
        idx = (i * batch_size + np.arange(batch_size)) % n
        batch = {"latents": jnp.asarray(latents[idx])[None], "context": jnp.asarray(context[idx])[None],
                 "null_context": jnp.asarray(np.broadcast_to(null, context[idx].shape))[None]}
        train_state, metrics = step(train_state, batch, base)
        if log is not None:
            log(i, float(metrics["loss"]))
    return train_state["params"], lora_cfg
