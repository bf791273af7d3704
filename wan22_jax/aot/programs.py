"""The stages of a generation as programs to compile ahead of time, with abstract (never allocated) inputs.

Each `Stage` is a function, its abstract arguments (`jax.ShapeDtypeStruct`s carrying their `NamedSharding` on the
target mesh), and what the report needs besides the compiler's numbers: analytic FLOPs, how many times the
stage runs per generation, how many times it streams its weights. The functions are the pipeline's own:
`text_encoder.encode_zero_padded`, `pipeline.denoise.start_loop` / `run_steps` (both experts, CFG as one batch,
the sampler's loop as one `lax.scan`), `models.vae.encode` / `decode`. Parameters come from `nnx.eval_shape`
(abstract_dit / abstract_t5 / abstract_vae shapes) and are split by `sharding/rules.py`; nothing full-size is ever
allocated.

Stages of `generate`, in the order they run: text-encode (prompt, then negative prompt), vae-encode (image tasks),
sample (the whole loop; with `offload_experts` one stage per A14B expert, the other one on the host), vae-decode.

Training: `train-step` is one full fine-tuning step of the DiT (`training.step.train_step_fn`: forward, backward,
AdamW, EMA if asked) with the whole training state (fp32 master weights, moments, EMA) and the batch split by
`training/placement.py` (the inference rules), the state donated; `lora-train-step` the same for a LoRA on a
frozen base DiT sharded the same way. An A14B task compiles one expert's step (each expert trains alone, on its
own timestep range).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wan22_jax.configs import TaskConfig
from wan22_jax.errors import ConfigError
from wan22_jax.flops import dit_forward_flops, jaxpr_flops, t5_forward_flops
from wan22_jax.models import vae as vae_api
from wan22_jax.models.dit import DIT_PRESETS, DiTConfig, WanModel
from wan22_jax.models.t5 import T5Encoder, abstract_t5, t5_config
from wan22_jax.models.vae import abstract_vae
from wan22_jax.models.vae_config import preset as vae_preset
from wan22_jax.models.vae_tiling import Tiling
from wan22_jax.ops import Kernels
from wan22_jax.ops.quant import quantize_module
from wan22_jax.pipeline.denoise import DenoiseInputs, run_steps, start_loop
from wan22_jax.pipeline.plan import make_plan
from wan22_jax.pipeline.request import validate_request
from wan22_jax.samplers.base import compute_dtype
from wan22_jax.samplers.loop import step_rows
from wan22_jax.sharding.rules import ACTIVATION_RULES, param_specs, resolve_spec
from wan22_jax.state import fill_state, flat_state
from wan22_jax.text_encoder import encode_zero_padded
from wan22_jax.training import lora as lora_mod
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.placement import batch_shardings, dotted_specs, state_shardings, tree_shardings
from wan22_jax.training.step import Placement, full_params, init_state, train_step_fn

PROGRAMS = ("dit-step", "sample", "text-encode", "vae-encode", "vae-decode", "generate", "train-step",
            "lora-train-step")


@dataclasses.dataclass(frozen=True)
class Models:
    """Which models a plan compiles: presets by name (full size or the tiny test ones)."""

    dit: DiTConfig
    t5: str
    vae: str


def models_for(task: TaskConfig, size: str) -> Models:
    """"full": the release models of `task`; "tiny": the reference-case sizes (tests, smoke runs)."""
    if size == "full":
        return Models(DIT_PRESETS[task.dit_preset], "umt5-xxl", "wan2.2" if task.vae_version == "2.2" else "wan2.1")
    tiny = {"t2v": "tiny-t2v", "i2v": "tiny-i2v", "ti2v": "tiny-ti2v"}[task.mode]
    return Models(DIT_PRESETS[tiny], "tiny", "tiny2.2" if task.vae_version == "2.2" else "tiny2.1")


@dataclasses.dataclass
class Stage:
    """One program to compile.

    fn: a function of `args` (jit-compatible); args: abstract pytrees (ShapeDtypeStructs with shardings).
    flops: analytic FLOPs of one run (all devices together); runs: how many times a generation runs it;
    weight_bytes: global bytes of the parameters it holds; weight_passes: how often one run reads them.
    """

    name: str
    fn: Callable
    args: tuple
    flops: float
    runs: int = 1
    weight_bytes: int = 0
    weight_passes: int = 1
    note: str = ""
    donate: tuple[int, ...] = ()  # arguments whose buffers the program reuses (a training state)
    out_shardings: Any = None


def abstract_array(shape, dtype, mesh: Mesh, spec=None) -> jax.ShapeDtypeStruct:
    """An abstract array placed by an explicit PartitionSpec (replicated when None)."""
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=NamedSharding(mesh, spec or PartitionSpec()))


def abstract_activation(shape, dtype, names, mesh: Mesh) -> jax.ShapeDtypeStruct:
    """An abstract activation split by logical activation names (ACTIVATION_RULES)."""
    spec, _ = resolve_spec(names, shape, ACTIVATION_RULES, dict(mesh.shape))
    return abstract_array(shape, dtype, mesh, spec)


def sharded_abstract(graphdef, abstract, component: str, mesh: Mesh):
    """(graphdef, abstract state whose leaves carry their NamedSharding by the `component` rules, global bytes)."""
    specs, _ = param_specs(abstract, component, mesh)
    leaves = flat_state(abstract)
    placed = {p: abstract_array(leaf.shape, leaf.dtype, mesh, specs[p]) for p, leaf in leaves.items()}
    size = sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in leaves.values())
    return graphdef, fill_state(abstract, placed), size


@dataclasses.dataclass(frozen=True)
class BasePlan:
    """What every plan of `wan22 aot` names: the task and its models, the video size, dtype, kernels, mesh, the step
    count (None: the task's) and the weights' quantisation. `Plan` (the generation tasks) and
    `conditioned.ConditionedPlan` (S2V, Animate) add their own fields after these."""

    task: Any
    models: Any
    width: int
    height: int
    frames: int
    dtype: Any
    kernels: Kernels
    mesh: Mesh
    steps: int | None = None
    weights: str | None = None  # "int8" / "fp8": the DiT (and umT5) Linears quantised (`ops.quant`)


@dataclasses.dataclass(frozen=True)
class Plan(BasePlan):
    """What to compile: task, models, video size, dtype, kernels, mesh (and the weights' quantisation)."""

    task: TaskConfig
    models: Models
    image: bool = False
    vae_tiling: Tiling | None = None
    offload_experts: bool = False
    train: TrainConfig = TrainConfig()  # train-step programs: optimizer, remat, EMA (dtype and attention: above)
    train_batch: int = 1  # samples per training step
    lora: lora_mod.LoraConfig = lora_mod.LoraConfig()


def _request(plan: Plan):
    task = plan.task
    image = None
    if task.mode == "i2v" or (task.mode == "ti2v" and plan.image):
        image = np.zeros((plan.height, plan.width, 3), np.uint8)
    z = vae_preset(plan.models.vae).z_dim
    return validate_request(task, plan.models.dit, z, has_text_encoder=True, prompt="aot", image=image,
                            num_frames=plan.frames, height=plan.height, width=plan.width,
                            num_inference_steps=plan.steps, progress=False)


def text_encode(plan: Plan, batch: int = 1) -> Stage:
    """umT5 over [batch, text_len] tokens; runs twice per generation (prompt, negative prompt: cached apart)."""
    cfg = t5_config(plan.models.t5)
    mesh = plan.mesh
    if plan.weights is None:
        abstract = abstract_t5(cfg, dtype=plan.dtype, param_dtype=plan.dtype, kernels=plan.kernels)
    else:
        abstract = nnx.split(nnx.eval_shape(lambda: quantize_module(
            T5Encoder(cfg, dtype=plan.dtype, param_dtype=plan.dtype, kernels=plan.kernels, rngs=nnx.Rngs(0)),
            plan.weights)))
    graphdef, state, size = sharded_abstract(*abstract, "t5", mesh)
    length = plan.models.dit.text_len
    ids = abstract_activation((batch, length), jnp.int32, ("batch", None), mesh)

    def fn(state, ids, mask):
        return encode_zero_padded(graphdef, state, ids, mask)

    return Stage("text-encode", fn, (state, ids, ids), t5_forward_flops(cfg, length, batch=batch), runs=2,
                 weight_bytes=size)


def _vae(plan: Plan):
    config = vae_preset(plan.models.vae)
    graphdef, state, size = sharded_abstract(*abstract_vae(config, kernels=plan.kernels), "vae", plan.mesh)
    return config, graphdef, state, size


def vae_encode(plan: Plan) -> Stage:
    """The image conditioning's encoder run: i2v-A14B the image and F - 1 black frames, ti2v the image alone."""
    config, graphdef, state, size = _vae(plan)
    frames = plan.frames if plan.task.mode == "i2v" else 1
    video = abstract_activation((1, 3, frames, plan.height, plan.width), jnp.float32,
                                ("batch", None, None, "height", None), plan.mesh)

    def fn(state, video):
        return vae_api.encode(graphdef, state, video, tiling=plan.vae_tiling)

    return Stage("vae-encode", fn, (state, video), jaxpr_flops(jax.make_jaxpr(fn)(state, video)), weight_bytes=size)


def vae_decode(plan: Plan, latent_shape) -> Stage:
    """Latents [1, z, F', h, w] -> video, one latent frame at a time (tiled with `plan.vae_tiling`)."""
    config, graphdef, state, size = _vae(plan)
    latent = abstract_activation((1, *latent_shape), jnp.float32, ("batch", None, None, "height", None), plan.mesh)

    def fn(state, latent):
        return vae_api.decode(graphdef, state, latent, tiling=plan.vae_tiling)

    note = "" if plan.vae_tiling is None else f"tiles {plan.vae_tiling.tile}/{plan.vae_tiling.overlap} px"
    return Stage("vae-decode", fn, (state, latent), jaxpr_flops(jax.make_jaxpr(fn)(state, latent)),
                 weight_bytes=size, note=note)


def _dit(plan: Plan):
    cfg = plan.models.dit
    def model():
        m = WanModel(cfg, dtype=plan.dtype, param_dtype=plan.dtype, kernels=plan.kernels)
        return m if plan.weights is None else quantize_module(m, plan.weights)

    return sharded_abstract(*nnx.split(nnx.eval_shape(model)), "dit", plan.mesh)


def _inputs(plan: Plan, request) -> DenoiseInputs:
    """Abstract DenoiseInputs of a request, laid out as the pipeline hands them over (latents and text
    replicated: small next to the weights)."""
    mesh, b = plan.mesh, request.batch
    cfg = plan.models.dit
    shape = request.latent_shape
    ctx = abstract_array((b, cfg.text_len, cfg.text_dim), jnp.float32, mesh)
    y = first = None
    if plan.task.mode == "i2v":
        y = abstract_array((b, 4 + shape[0], *shape[1:]), jnp.float32, mesh)
    elif request.image is not None:
        first = abstract_array((b, shape[0], 1, *shape[2:]), jnp.float32, mesh)
    return DenoiseInputs(abstract_array((b, *shape), jnp.float32, mesh), ctx, ctx, y, first)


def _abstract_rows(rows: dict, mesh: Mesh) -> dict:
    return {k: abstract_array(v.shape, v.dtype, mesh) for k, v in rows.items()}


def sample(plan: Plan, request) -> list[Stage]:
    """The whole sampling loop as the pipeline runs it (`start_loop` then `run_steps` over every step), both
    experts on the device; with `plan.offload_experts` (A14B) one stage per expert over its own steps, the other
    expert's weights on the host."""
    dplan = make_plan(request, plan.task)
    graphdef, state, size = _dit(plan)
    inputs = _inputs(plan, request)
    # the rows `step_rows` makes, as shapes (no array is made under a target mesh: it has no devices to run on)
    rows = jax.eval_shape(lambda: step_rows(request.tables, compute_dtype(jax.ShapeDtypeStruct((), jnp.float32))))
    grid = request.latent_shape[1:]
    cfg = plan.models.dit
    groups = grid[0] if dplan.frame_mask is not None else 1
    step_flops = dit_forward_flops(cfg, grid, batch=2 * request.batch, time_groups=groups, include_context=False)
    context_flops = dit_forward_flops(cfg, grid, batch=2 * request.batch) - step_flops
    nfe = request.steps
    n_experts = 2 if dplan.two_experts else 1

    if not (plan.offload_experts and dplan.two_experts):
        def fn(states, inputs, rows):
            _, carry, kvs = start_loop(graphdef, dplan, states, inputs)
            carry, _ = run_steps(graphdef, dplan, states, kvs, inputs, carry, rows, None)
            return carry.state.x, carry.first_bad

        states = (state,) * n_experts
        return [Stage("sample", fn, (states, inputs, _abstract_rows(rows, plan.mesh)),
                      n_experts * context_flops + nfe * step_flops, weight_bytes=n_experts * size,
                      weight_passes=max(1, nfe // n_experts),
                      note=f"{nfe} steps x CFG batch {2 * request.batch}, {n_experts} expert(s) on the device")]

    # one expert at a time: steps with t >= boundary on the high-noise expert, then the low-noise one
    t = np.asarray(request.schedule.timesteps, np.float64)[:nfe]
    k = int(np.sum(t >= dplan.boundary * dplan.num_train_timesteps))
    single = dataclasses.replace(dplan, two_experts=False)
    carry_shape = jax.eval_shape(lambda s, i: start_loop(graphdef, single, (s,), i)[1], state, inputs)
    carry = jax.tree.map(lambda a: abstract_array(a.shape, a.dtype, plan.mesh), carry_shape)
    stages = []
    for name, lo, hi in (("sample-high", 0, k), ("sample-low", k, nfe)):
        part = {key: jax.ShapeDtypeStruct((hi - lo, *v.shape[1:]), v.dtype) for key, v in rows.items()}

        def fn(state, inputs, carry, rows):
            text = jnp.concatenate([inputs.context, inputs.context_null])
            kvs = (nnx.merge(graphdef, state).encode_context(text),)
            carry, _ = run_steps(graphdef, single, (state,), kvs, inputs, carry, rows, None)
            return carry

        stages.append(Stage(name, fn, (state, inputs, carry, _abstract_rows(part, plan.mesh)),
                            context_flops + (hi - lo) * step_flops, weight_bytes=size, weight_passes=hi - lo,
                            note=f"steps {lo}..{hi - 1} of {nfe}, the other expert on the host"))
    return stages


def dit_step(plan: Plan, request) -> Stage:
    """One DiT forward of the loop: CFG halves as one batch [2B], the text K/V cached (computed once per
    generation)."""
    graphdef, state, size = _dit(plan)
    mesh, b = plan.mesh, 2 * request.batch
    cfg = plan.models.dit
    shape = request.latent_shape
    z = cfg.in_dim - (4 + shape[0] if plan.task.mode == "i2v" else 0)
    x = abstract_array((b, z, *shape[1:]), jnp.float32, mesh)
    y = abstract_array((b, cfg.in_dim - z, *shape[1:]), jnp.float32, mesh) if cfg.in_dim != z else None
    t = abstract_array((b,), jnp.float32, mesh)
    ctx = jax.ShapeDtypeStruct((b, cfg.text_len, cfg.text_dim), jnp.float32)
    kv = jax.eval_shape(lambda s, c: nnx.merge(graphdef, s).encode_context(c), state, ctx)
    kv = jax.tree.map(lambda a: abstract_activation(a.shape, a.dtype, (None, "batch", None, "heads", None), mesh), kv)

    def fn(state, x, t, kv, y):
        return nnx.merge(graphdef, state)(x, t, context_kv=kv, y=y)

    flops = dit_forward_flops(cfg, shape[1:], batch=b, include_context=False)
    return Stage("dit-step", fn, (state, x, t, kv, y), flops, runs=request.steps, weight_bytes=size)


def _placed(tree, shardings):
    return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), tree, shardings)


def train_step(plan: Plan, request, lora: bool = False) -> Stage:
    """One training step at the request's latent size: `train_batch` samples, each drawing its own t (and, for
    ti2v with `first_frame_prob`, a clean first frame); the state (params or adapters, moments, EMA) donated."""
    cfg = plan.models.dit
    if cfg.in_dim != request.latent_shape[0]:
        raise ConfigError(f"{plan.task.name}: training compiles for DiTs without image-latent channels (t2v, "
                          f"ti2v and the t2v-A14B experts); this DiT takes {cfg.in_dim} input channels")
    tc = dataclasses.replace(plan.train, dtype="bfloat16" if plan.dtype == jnp.bfloat16 else "float32",
                             attention=plan.kernels.attention)
    model = lambda: WanModel(cfg, dtype=plan.dtype, param_dtype=jnp.float32, kernels=plan.kernels)  # noqa: E731
    graphdef, abstract = nnx.split(nnx.eval_shape(model))
    mesh = plan.mesh
    specs = dotted_specs(abstract, "dit", mesh)
    base = nnx.to_pure_dict(abstract)
    frozen = frozen_sh = None
    params, params_fn = base, full_params
    if lora:
        params = jax.eval_shape(lambda: lora_mod.init_lora(base, plan.lora))
        frozen, params_fn = base, lora_mod.lora_params_fn(plan.lora)
        frozen_sh = tree_shardings(frozen, specs, mesh)
    state = jax.eval_shape(lambda p: init_state(p, tc), params)
    state_sh = state_shardings(state, specs, mesh)
    grid = request.latent_shape[1:]
    z = request.latent_shape[0]
    batch = {"latents": jax.ShapeDtypeStruct((tc.grad_accum, plan.train_batch, z, *grid), jnp.float32),
             "context": jax.ShapeDtypeStruct((tc.grad_accum, plan.train_batch, cfg.text_len, cfg.text_dim),
                                             jnp.float32)}
    placement = Placement(mesh, state_sh, batch_shardings(batch, mesh), frozen_sh)
    step = train_step_fn(graphdef, tc, params_fn, None, placement)
    args = (_placed(state, state_sh), _placed(batch, placement.batch),
            None if frozen is None else _placed(frozen, frozen_sh))
    groups = grid[0] if tc.first_frame_prob > 0 else 1
    forward = dit_forward_flops(cfg, grid, batch=plan.train_batch * tc.grad_accum, time_groups=groups)
    passes = 4 if tc.remat else 3  # forward, backward (2x), and the forward again under remat
    size = sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(state["params"]))
    frozen_size = 0 if frozen is None else sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(frozen))
    remat = tc.remat_policy if tc.remat else "none"
    what = f"LoRA rank {plan.lora.rank} on a frozen fp32 base" if lora else "full fine-tune"
    note = (f"{what}: batch {plan.train_batch} x accum {tc.grad_accum}, remat {remat}, moments {tc.moment_dtype}, "
            f"EMA {'on' if tc.ema_decay > 0 else 'off'}")
    return Stage("lora-train-step" if lora else "train-step", step, args, passes * forward,
                 weight_bytes=size + frozen_size, weight_passes=passes, note=note, donate=(0,),
                 out_shardings=(state_sh, None))


def stages(plan: Plan, program: str) -> list[Stage]:
    """The stages of `program` (one of PROGRAMS) for `plan`, in the order a generation runs them (traced under
    the plan's mesh: the models' sharding constraints and the attention kernels read it)."""
    request = _request(plan)  # on the host: its PRNG key is a real array, which a target mesh cannot hold
    with jax.set_mesh(plan.mesh):
        return _stages(plan, program, request)


def _stages(plan: Plan, program: str, request) -> list[Stage]:
    if program == "dit-step":
        return [dit_step(plan, request)]
    if program in ("train-step", "lora-train-step"):
        return [train_step(plan, request, lora=program == "lora-train-step")]
    if program == "sample":
        return sample(plan, request)
    if program == "text-encode":
        return [text_encode(plan, request.batch)]
    if program == "vae-encode":
        return [vae_encode(plan)]
    if program == "vae-decode":
        return [vae_decode(plan, request.latent_shape)]
    out = [text_encode(plan, request.batch)]
    if request.image is not None:
        out.append(vae_encode(plan))
    return out + sample(plan, request) + [vae_decode(plan, request.latent_shape)]


__all__ = ["PROGRAMS", "Models", "models_for", "Stage", "Plan", "sharded_abstract", "stages", "text_encode",
           "vae_encode", "vae_decode", "sample", "dit_step", "train_step"]
