"""Training hyper-parameters (one frozen, strictly parsed dataclass)."""

from __future__ import annotations

import dataclasses
import math

from wan22_jax.configs import dtype_name
from wan22_jax.errors import ConfigError, InputError

T_SAMPLINGS = ("uniform", "logit_normal")
ATTENTIONS = ("xla", "dot_product", "cudnn", "splash")  # ops.kernels.ATTENTIONS less the CPU-only kernel
# jax.checkpoint policies of a rematerialised block: "full" saves only its input; "dots" also every matmul
# output; "dots_no_batch" the matmul outputs without batch dimensions (the weight-side products)
REMAT_POLICIES = ("full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16")  # canonical names; "fp32" and "bf16" are accepted too (configs.DTYPE_NAMES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How one DiT (or one LoRA on it) is trained.

    lr, warmup_steps, total_steps: AdamW with linear warmup then cosine decay to `lr * final_lr_ratio`.
    grad_clip: global-norm clipping (0 disables). grad_accum: micro-batches per step (the batch carries a
      leading [grad_accum] axis; the mean gradient over all samples is exactly that of the big batch).
    ema_decay: EMA of the weights (0 disables it: the state then holds no EMA copy at all).
    shift: the samplers' resolution shift applied to the sampled sigma (`samplers.shift_sigmas`).
    t_sampling: base distribution of sigma before the shift: "uniform" or "logit_normal" (mean 0, std 1).
    t_range: (lo, hi) in [0, 1]: this model only sees shifted sigmas in [lo, hi) — an A14B expert trains on
      its side of the boundary: high noise (boundary, 1), low noise (0, boundary).
    first_frame_prob: ti2v: probability that a sample is image-conditioned (latent frame 0 clean with t=0,
      excluded from the loss).
    text_dropout: probability that a sample's context is zeroed (the null condition classifier-free guidance
      needs).
    dtype: compute dtype of the DiT, any spelling of `configs.DTYPE_NAMES` ("bf16", "float32"...), stored as
      "float32" or "bfloat16" (the master weights are always float32).
    moment_dtype: dtype the two Adam moments are stored in ("float32" or "bfloat16": 4 bytes less per
      parameter each; the update itself is computed in float32).
    remat: rematerialise every DiT block in the backward pass (jax.checkpoint on the scanned block): the
      activation memory of one block instead of all of them, for about one extra forward.
    remat_policy: what a rematerialised block keeps: "full" (its input only), "dots" (also every matmul
      output), "dots_no_batch" (matmul outputs without a batch dimension).
    attention: the DiT's attention kernel while training (`ops.Kernels.attention`): "xla" (anywhere),
      "dot_product", "cudnn" (NVIDIA, bf16) or "splash" (TPU); on a mesh cudnn and splash run in shard_map.
    """

    lr: float = 1e-4
    warmup_steps: int = 100
    total_steps: int = 1000
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.0
    shift: float = 5.0
    t_sampling: str = "uniform"
    t_range: tuple[float, float] = (0.0, 1.0)
    first_frame_prob: float = 0.0
    text_dropout: float = 0.0
    num_train_timesteps: int = 1000
    dtype: str = "float32"
    moment_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "full"
    attention: str = "xla"
    seed: int = 0

    def __post_init__(self):
        self._check_types()
        try:
            object.__setattr__(self, "dtype", dtype_name(self.dtype, "dtype"))
        except InputError as e:
            raise ConfigError(str(e)) from None
        if self.t_sampling not in T_SAMPLINGS:
            raise ConfigError(f"t_sampling {self.t_sampling!r} is not one of {T_SAMPLINGS}")
        try:
            object.__setattr__(self, "moment_dtype", dtype_name(self.moment_dtype, "moment_dtype"))
        except InputError as e:
            raise ConfigError(str(e)) from None
        for name, allowed in (("dtype", DTYPES), ("moment_dtype", DTYPES), ("remat_policy", REMAT_POLICIES),
                              ("attention", ATTENTIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {allowed}")
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(f"t_range {self.t_range}: need 0 <= lo < hi <= 1")
        if self.grad_accum < 1 or self.total_steps < 1 or self.warmup_steps < 0:
            raise ConfigError("grad_accum and total_steps must be >= 1, warmup_steps >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay {self.ema_decay}: need 0 <= decay < 1")
        if not 0.0 <= self.first_frame_prob <= 1.0:
            raise ConfigError(f"first_frame_prob {self.first_frame_prob}: need a probability")
        if self.shift <= 0:
            raise ConfigError(f"shift {self.shift}: must be > 0")
        if self.lr <= 0:
            raise ConfigError(f"lr {self.lr}: must be > 0")

    def _check_types(self) -> None:
        """Each field of the type its annotation names (a JSON typo such as "lr": "1e-4" fails here, by name,
        not deep inside the optimizer)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", "int"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"{f.name}={v!r}: must be a finite number")
                if f.type == "int" and not float(v).is_integer():
                    raise ConfigError(f"{f.name}={v!r}: must be a whole number")
                if f.type == "int":
                    object.__setattr__(self, f.name, int(v))
            elif f.type == "bool" and not isinstance(v, bool):
                raise ConfigError(f"{f.name}={v!r}: must be true or false")
            elif f.type == "str" and not isinstance(v, str):
                raise ConfigError(f"{f.name}={v!r}: must be a string")
        if (not isinstance(self.t_range, tuple) or len(self.t_range) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in self.t_range)):
            raise ConfigError(f"t_range={self.t_range!r}: must be a pair [lo, hi] of numbers")
