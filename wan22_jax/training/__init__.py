"""Training and fine-tuning of the Wan DiT: the flow-matching objective, a pure jitted train step (AdamW,
warmup + cosine, clipping, gradient accumulation, EMA, bf16 compute over fp32 master weights), Orbax
checkpoints that resume exactly, LoRA as a parameter-pytree transformation, and `wan22 train`.

    state = init_state(params, cfg)                      # a plain pytree
    train_step = make_train_step(graphdef, cfg)          # jitted once
    state, metrics = train_step(state, batch)            # batch: {"latents": [A, B, ...], "context": [A, B, L, D]}
"""

from wan22_jax.training.config import TrainConfig
from wan22_jax.training.objective import flow_matching_loss, noisy_inputs, sample_sigmas
from wan22_jax.training.step import ema_update, init_state, make_eval_loss, make_optimizer, make_train_step

__all__ = ["TrainConfig", "ema_update", "flow_matching_loss", "init_state", "make_eval_loss", "make_optimizer",
           "make_train_step", "noisy_inputs", "sample_sigmas"]
