"""`wan22 aot`: compile a task's programs for a real TPU or NVIDIA target on this host and report whether they fit.

    JAX_PLATFORMS=cpu wan22 aot --target h100x8 --task t2v-A14B --program generate --mesh fsdp=4,seq=2 \
        --attention cudnn
    JAX_PLATFORMS=cpu wan22 aot --target v6e-8 --task t2v-A14B --program sample --mesh fsdp=8 --attention splash
    JAX_PLATFORMS=cpu wan22 aot --target h100x8 --task ti2v-5B --program train-step --mesh fsdp=4,seq=2 \
        --attention cudnn --remat full

Needs the `aot` extra (libtpu and the CUDA plugin) in an environment of its own; without it a TPU/GPU target
is refused in one line naming the extra. Nothing full-size is allocated: parameters and inputs are abstract.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from wan22_jax.aot.compile import compile_stage, format_report
from wan22_jax.aot.conditioned import (
    CONDITIONED_TASKS,
    ConditionedPlan,
    conditioned_stages,
)
from wan22_jax.aot.programs import PROGRAMS, Plan, models_for, stages
from wan22_jax.aot.targets import AotError, make_devices, parse_target
from wan22_jax.configs import TASKS, get_task
from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.vae_tiling import Tiling
from wan22_jax.ops import Kernels
from wan22_jax.ops.kernels import ATTENTIONS, CONVS
from wan22_jax.ops.quant import WEIGHT_MODES
from wan22_jax.sharding.rules import MESH_AXES, parse_mesh_spec
from wan22_jax.training.config import REMAT_POLICIES, TrainConfig
from wan22_jax.training.lora import LoraConfig

ATTENTION_KERNELS = tuple(a for a in ATTENTIONS if a != "cpu")  # the CPU kernels never run on a target
CONV_KERNELS = tuple(c for c in CONVS if c != "cpu")
DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True,
                   help="h100, h200, a100-80g, l40s, rtx4090 (xN: N GPUs, e.g. h100x8); "
                        "v5e-N, v5p-N, v6e-N, tpu7x-N")
    p.add_argument("--slices", type=int, default=1, help="TPU slices (default 1)")
    p.add_argument("--task", default="ti2v-5B", choices=sorted(TASKS) + sorted(CONDITIONED_TASKS),
                   help="s2v-14B and animate-14B compile dit-step or sample (aot/conditioned.py)")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT in pixels (default: the task's)")
    p.add_argument("--frames", type=int, default=None, help="video frames, 1 + 4k (default: the task's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the task's)")
    p.add_argument("--program", default="generate", choices=PROGRAMS)
    p.add_argument("--mesh", default=None,
                   help=f"mesh spec over the target's devices, axes {', '.join(MESH_AXES)} (default: fsdp=all)")
    p.add_argument("--attention", default="xla", choices=ATTENTION_KERNELS,
                   help="attention kernel: cudnn for NVIDIA, splash for TPU, xla anywhere")
    p.add_argument("--conv", default="xla", choices=CONV_KERNELS,
                   help="VAE convolutions: xla (one convolution each), or dots (a scan of per-tap matmuls: "
                        "compiles several times faster for TPUs; ops/conv.py)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--weights", default=None, choices=WEIGHT_MODES,
                   help="weight-only quantised DiT and text-encoder Linears (default: --dtype weights)")
    p.add_argument("--models", default="full", choices=("full", "tiny"),
                   help="full-size release models, or the tiny test ones (smoke runs)")
    p.add_argument("--image", action="store_true", help="ti2v: with an input image (adds the VAE encode)")
    p.add_argument("--vae-tile", type=int, default=None, help="VAE tile edge in pixels (default: untiled)")
    p.add_argument("--vae-overlap", type=int, default=64, help="VAE tile overlap in pixels")
    p.add_argument("--offload-experts", action="store_true",
                   help="A14B: one expert on the device at a time (one sample stage per expert)")
    train = p.add_argument_group("training programs (train-step, lora-train-step)")
    train.add_argument("--remat", default="full", choices=("none",) + REMAT_POLICIES,
                       help="rematerialise each DiT block in the backward pass with this policy (default full)")
    train.add_argument("--moment-dtype", default="fp32", choices=sorted(DTYPES), help="Adam moments' dtype")
    train.add_argument("--ema", action="store_true", help="keep an EMA copy of the weights in the state")
    train.add_argument("--train-batch", type=int, default=None,
                       help="samples per step (default: the mesh's data axis size)")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    train.add_argument("--lora-rank", type=int, default=32, help="lora-train-step: adapter rank")
    p.add_argument("--json", default=None, help="also write the reports to this JSON file ('-': stdout only)")


def _size(text: str | None, task) -> tuple[int, int]:
    if text is None:
        return task.size
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x704") from None
    return w, h


def _kernels(args: argparse.Namespace) -> Kernels:
    return Kernels(attention=args.attention, conv=args.conv)


def _mesh(args: argparse.Namespace, devices: list) -> Mesh:
    sizes = parse_mesh_spec(args.mesh or f"fsdp={len(devices)}", len(devices))
    return Mesh(np.array(devices).reshape(tuple(sizes.values())), tuple(sizes))


def make_conditioned_plan(args: argparse.Namespace, devices: list) -> ConditionedPlan:
    """The plan of an S2V / Animate command (dit-step or sample)."""
    task = CONDITIONED_TASKS[args.task]
    width, height = _size(args.size, task)
    return ConditionedPlan(task, args.models, width, height, args.frames or task.frames, DTYPES[args.dtype],
                           _kernels(args), _mesh(args, devices), steps=args.steps,
                           weights=args.weights)


def make_plan(args: argparse.Namespace, devices: list) -> Plan | ConditionedPlan:
    """The Plan of the command's arguments over `devices` (checked before anything is traced)."""
    if args.task in CONDITIONED_TASKS:
        return make_conditioned_plan(args, devices)
    task = get_task(args.task)
    width, height = _size(args.size, task)
    mesh = _mesh(args, devices)
    sizes = dict(mesh.shape)
    tiling = None if args.vae_tile is None else Tiling(tile=args.vae_tile, overlap=args.vae_overlap)
    if args.offload_experts and not task.two_experts:
        raise InputError(f"--offload-experts: task {task.name} has one DiT")
    train = TrainConfig(remat=args.remat != "none", remat_policy="full" if args.remat == "none" else args.remat,
                        moment_dtype=args.moment_dtype, ema_decay=0.9999 if args.ema else 0.0,
                        grad_accum=args.grad_accum,
                        # ti2v trains t2v and first-frame i2v together: half the samples keep a clean frame 0
                        first_frame_prob=0.5 if task.mode == "ti2v" else 0.0)
    batch = sizes["data"] if args.train_batch is None else args.train_batch
    if batch < 1:
        raise InputError(f"--train-batch {batch}: must be >= 1")
    return Plan(task, models_for(task, args.models), width, height, args.frames or task.frame_num,
                DTYPES[args.dtype], _kernels(args), mesh, steps=args.steps, image=args.image,
                vae_tiling=tiling, offload_experts=args.offload_experts, weights=args.weights, train=train,
                train_batch=batch, lora=dataclasses.replace(LoraConfig(), rank=args.lora_rank, alpha=float(args.lora_rank)))


def main(args: argparse.Namespace) -> int:
    try:
        target = parse_target(args.target, args.slices)
        devices = make_devices(target)
        plan = make_plan(args, devices)
    except (AotError, ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mesh_text = ",".join(f"{k}={v}" for k, v in plan.mesh.shape.items() if v > 1) or "one device"
    weights = f" ({args.weights} weights)" if args.weights else ""
    print(f"{args.task} {plan.width}x{plan.height}x{plan.frames} {args.dtype}{weights} on {target.name} "
          f"({len(devices)} x {devices[0].device_kind}, mesh {mesh_text}, attention {args.attention}"
          f"{'' if args.conv == 'xla' else ', conv ' + args.conv}): "
          f"{args.program}", flush=True)
    reports = []
    try:
        program = (conditioned_stages(plan, args.program) if isinstance(plan, ConditionedPlan)
                   else stages(plan, args.program))
        for stage in program:
            report, _ = compile_stage(stage, target, plan.mesh)
            reports.append(report)
            print("\n".join(format_report(report)), flush=True)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fits = all(r.fits for r in reports)
    peak = max((r.peak or 0) for r in reports)
    print(f"{'all stages fit' if fits else 'NOT ALL STAGES FIT'}; largest peak {peak / 2**30:.2f} GiB of "
          f"{target.memory / 2**30:.2f} GiB per device")
    if args.json:
        doc = {"command": " ".join(sys.argv), "target": target.name, "task": args.task, "program": args.program,
               "mesh": dict(plan.mesh.shape), "attention": args.attention, "conv": args.conv, "dtype": args.dtype, "weights": args.weights,
               "size": [plan.width, plan.height, plan.frames], "fits": fits,
               "stages": [r.to_json() for r in reports]}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0 if fits else 1
