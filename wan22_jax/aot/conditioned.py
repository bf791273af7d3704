"""Programs of the conditioned 14B DiTs for `wan22 aot`: S2V-14B (speech to video) and Animate-14B.

Both are the Wan DiT with extra conditioning modules (models/s2v, models/animate); their parameters are abstract
(`nnx.eval_shape`) and split by the DiT's rules (`sharding/rules.py` RULES["dit"]: every extra module names its
axes with the DiT's logical names `embed`, `heads`, `mlp`, `layers`, so no rule of its own is needed).

Programs:
* `dit-step`: one forward at the task's clip size with every conditioning input present, the text (and CLIP)
  K/V precomputed as the loop caches them. S2V runs classifier-free guidance as one batch of 2 (official
  guide_scale 4.5); Animate's default guide_scale is 1.0: one sample, no unconditional pass.
* `sample`: the denoising loop of one clip as one `lax.scan` over the steps, the DiT forward and a
  flow-matching Euler update per step (the pipelines' multistep solvers keep a few more latent-sized buffers:
  small next to the activations). Not the pipelines' own loop: a memory and partitioning plan of it.

Clip sizes (official defaults): S2V 80 frames per clip (20 latent frames) with 73 motion frames (19 latent
frames) and 4 audio frames per latent frame; Animate 77 frames per clip (77 // 4 + 2 = 21 latent frames with
the reference slot) and 512x512 face crops of every frame.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from wan22_jax.aot.programs import BasePlan, Stage, abstract_activation, abstract_array, sharded_abstract
from wan22_jax.errors import InputError
from wan22_jax.flops import jaxpr_flops
from wan22_jax.models.animate.model_animate import ANIMATE_PRESETS, CLIP_TOKENS, AnimateConfig, WanAnimateModel
from wan22_jax.models.s2v.model_s2v import AUDIO_LAYERS, S2V_PRESETS, S2VConfig, WanModelS2V
from wan22_jax.ops import Kernels
from wan22_jax.ops.quant import quantize_module

VAE_STRIDE = 8  # both use the Wan2.1 VAE (4x8x8)


@dataclasses.dataclass(frozen=True)
class ConditionedTask:
    """A conditioned DiT task of `wan22 aot`: its presets (full, tiny) and official clip defaults."""

    name: str
    full: str
    tiny: str
    size: tuple[int, int]  # (width, height) the plans use by default: 720p
    frames: int  # video frames per clip
    steps: int
    cfg_batch: int  # 2: conditional and unconditional passes as one batch; 1: no guidance by default


CONDITIONED_TASKS: dict[str, ConditionedTask] = {
    "s2v-14B": ConditionedTask("s2v-14B", "s2v-14B", "tiny-s2v", (1280, 720), 80, 40, 2),
    "animate-14B": ConditionedTask("animate-14B", "animate-14B", "tiny-animate", (1280, 720), 77, 20, 1),
}
S2V_MOTION_FRAMES = 73  # pixel frames of motion context (official motion_frames)


@dataclasses.dataclass(frozen=True)
class ConditionedPlan(BasePlan):
    """What to compile for a conditioned task (the fields of `BasePlan`)."""

    task: ConditionedTask
    models: str  # "full" | "tiny"


def _config(plan: ConditionedPlan):
    name = plan.task.full if plan.models == "full" else plan.task.tiny
    return (S2V_PRESETS if plan.task.name == "s2v-14B" else ANIMATE_PRESETS)[name]


def _model(plan: ConditionedPlan, cfg, kernels: Kernels):
    cls = WanModelS2V if isinstance(cfg, S2VConfig) else WanAnimateModel

    def build():
        m = cls(cfg, dtype=plan.dtype, param_dtype=plan.dtype, kernels=kernels, rngs=nnx.Rngs(0))
        return m if plan.weights is None else quantize_module(m, plan.weights)

    return nnx.split(nnx.eval_shape(build))


def _latent_grid(plan: ConditionedPlan, cfg) -> tuple[int, int, int]:
    if plan.width % (VAE_STRIDE * 2) or plan.height % (VAE_STRIDE * 2):
        raise InputError(f"size {plan.width}x{plan.height}: width and height must be multiples of 16")
    if isinstance(cfg, S2VConfig):
        if plan.frames % 4 or plan.frames < 4:
            raise InputError(f"--frames {plan.frames}: S2V clips are a multiple of 4 frames (official 80)")
        f = plan.frames // 4
    else:
        if (plan.frames - 1) % 4 or plan.frames < 5:
            raise InputError(f"--frames {plan.frames}: Animate clips are 1 + 4k frames (official 77)")
        f = plan.frames // 4 + 2
    return f, plan.height // VAE_STRIDE, plan.width // VAE_STRIDE


def _inputs(plan: ConditionedPlan, cfg, b: int, f: int, h: int, w: int):
    """Abstract conditioning inputs (keyword arguments of the model's forward but x, t and the K/V)."""
    mesh = plan.mesh
    z = cfg.out_dim
    if isinstance(cfg, S2VConfig):
        motion = (S2V_MOTION_FRAMES + 3) // 4
        return {"ref_latents": abstract_array((b, z, 1, h, w), jnp.float32, mesh),
                "motion_latents": abstract_array((b, z, motion, h, w), jnp.float32, mesh),
                "cond_states": abstract_array((b, cfg.cond_dim, f, h, w), jnp.float32, mesh),
                "audio_input": abstract_array((b, AUDIO_LAYERS, cfg.audio_dim, 4 * f), jnp.float32, mesh)}
    s = cfg.motion_encoder_size
    return {"y": abstract_array((b, cfg.in_dim - z, f, h, w), jnp.float32, mesh),
            "pose_latents": abstract_array((b, z, f - 1, h, w), jnp.float32, mesh),
            "face_pixel_values": abstract_array((b, 3, 4 * (f - 2) + 1, s, s), jnp.float32, mesh)}


def _context_kv(plan: ConditionedPlan, cfg, graphdef, state, b: int):
    """Abstract text (and CLIP image) K/V of every layer, heads split as the DiT step expects them."""
    ctx = jax.ShapeDtypeStruct((b, cfg.text_len, cfg.text_dim), jnp.float32)
    if isinstance(cfg, AnimateConfig):
        clip = jax.ShapeDtypeStruct((b, CLIP_TOKENS, cfg.image_dim), jnp.float32)
        kv = jax.eval_shape(lambda s, c, i: nnx.merge(graphdef, s).encode_context(c, i), state, ctx, clip)
    else:
        kv = jax.eval_shape(lambda s, c: nnx.merge(graphdef, s).encode_context(c), state, ctx)
    return tuple(abstract_activation(a.shape, a.dtype, (None, "batch", None, "heads", None), plan.mesh) for a in kv)


def conditioned_stages(plan: ConditionedPlan, program: str) -> list[Stage]:
    """The stages of `program` ("dit-step" or "sample") for a conditioned task (traced under the plan's mesh)."""
    if program not in ("dit-step", "sample"):
        raise InputError(f"--program {program}: task {plan.task.name} compiles dit-step or sample")
    _latent_grid(plan, _config(plan))  # checked before anything is traced
    with jax.set_mesh(plan.mesh):
        return [_stage(plan, program)]


def _stage(plan: ConditionedPlan, program: str) -> Stage:
    cfg = _config(plan)
    f, h, w = _latent_grid(plan, cfg)
    b = plan.task.cfg_batch
    graphdef, abstract = _model(plan, cfg, plan.kernels)
    graphdef, state, size = sharded_abstract(graphdef, abstract, "dit", plan.mesh)
    kv = _context_kv(plan, cfg, graphdef, state, b)
    cond = _inputs(plan, cfg, b, f, h, w)
    x = abstract_array((b, cfg.out_dim, f, h, w), jnp.float32, plan.mesh)
    steps = plan.steps or plan.task.steps

    def forward(gd, state, x, t, kv, cond):
        return nnx.merge(gd, state)(x, t, context_kv=kv, **cond)

    # FLOPs from the jaxpr of the same program with XLA attention (custom kernels count zero there)
    xla_graphdef = _model(plan, cfg, dataclasses.replace(plan.kernels, attention="xla"))[0]
    t = abstract_array((b,), jnp.float32, plan.mesh)
    guided = "CFG batch 2" if b == 2 else "no guidance (guide_scale 1)"
    if program == "dit-step":
        def fn(state, x, t, kv, cond):
            return forward(graphdef, state, x, t, kv, cond)

        flops = jaxpr_flops(jax.make_jaxpr(lambda *a: forward(xla_graphdef, *a))(state, x, t, kv, cond))
        return Stage("dit-step", fn, (state, x, t, kv, cond), flops, runs=steps, weight_bytes=size,
                     note=f"latent {f}x{h}x{w}, {guided}")

    sigmas = abstract_array((steps + 1,), jnp.float32, plan.mesh)
    x1 = abstract_array((1, cfg.out_dim, f, h, w), jnp.float32, plan.mesh)

    def loop(gd, state, x, sigmas, kv, cond):
        def step(x, sig):
            s, s_next = sig[0], sig[1]
            v = forward(gd, state, jnp.repeat(x, b, axis=0), jnp.full((b,), s * 1000.0), kv, cond)
            v = v[1:] + 4.5 * (v[:1] - v[1:]) if b == 2 else v
            return x + (s_next - s) * v, None

        pairs = jnp.stack([sigmas[:-1], sigmas[1:]], axis=1)
        return jax.lax.scan(step, x, pairs)[0]

    def fn(state, x, sigmas, kv, cond):
        return loop(graphdef, state, x, sigmas, kv, cond)

    flops = jaxpr_flops(jax.make_jaxpr(lambda *a: loop(xla_graphdef, *a))(state, x1, sigmas, kv, cond))
    return Stage("sample", fn, (state, x1, sigmas, kv, cond), flops, weight_bytes=size, weight_passes=steps,
                 note=f"{steps} steps, latent {f}x{h}x{w}, {guided}")


__all__ = ["CONDITIONED_TASKS", "ConditionedTask", "ConditionedPlan", "conditioned_stages"]
