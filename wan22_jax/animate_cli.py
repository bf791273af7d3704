"""`wan22 generate --task animate-14B`: Animate-14B from the official preprocessing's output, written as mp4.

    wan22 generate --task animate-14B --checkpoint Wan2.2-Animate-14B --src-root preprocessed/ --out anim.mp4
    wan22 generate --task animate-14B --mode replace --checkpoint ... --image ref.png --pose-video pose.mp4 \\
        --face-video face.mp4 --bg-video bg.mp4 --mask-video mask.mp4 --use-relighting-lora

The options shared with the other tasks (--checkpoint/--preset, --prompt or --prompt-embeds, --negative-prompt or
--negative-prompt-embeds, --steps, --shift, --solver, --guide-scale, --seed, --dtype, --mesh, --no-memory-check,
--out, --fps, --quiet) keep their meaning; --frames is the clip length
(the official --frame_num, default 77). Every input file is read and checked before the model loads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from wan22_jax.animate_presets import random_animate_pipeline
from wan22_jax.cli_files import embeds_from_args, save_and_report
from wan22_jax.errors import InputError
from wan22_jax.ops.options import kernels_from_args
from wan22_jax.pipeline.animate import check_animate_inputs
from wan22_jax.pipeline.animate_inputs import MODES, animate_inputs
from wan22_jax.pipeline.animate_pipeline import ANIMATE_TASK, AnimatePipeline, is_animate_folder
from wan22_jax.video import check_fps

ANIMATE_OPTIONS = ("mode", "src_root", "pose_video", "face_video", "bg_video", "mask_video", "refert_num",
                   "use_relighting_lora")
# options of the other tasks that an Animate run does not take (its size comes from the pose video)
NOT_FOR_ANIMATE = ("size", "sampler_preset", "lora", "weights", "vae_tiling")


def add_animate_arguments(p: argparse.ArgumentParser) -> None:
    """The Animate-only options of `wan22 generate`."""
    g = p.add_argument_group("animate-14B (inputs from the official preprocessing, wan/modules/animate/preprocess)")
    g.add_argument("--mode", choices=MODES, help="animate (default): the reference character performs the pose "
                   "video; replace: it replaces the person of the driving video (needs --bg-video, --mask-video)")
    g.add_argument("--src-root", metavar="DIR", help="the preprocessing's output folder: src_ref.png, src_pose.mp4, "
                   "src_face.mp4 (+ src_bg.mp4, src_mask.mp4 for replace); explicit options override its files. "
                   "--image is the reference image")
    g.add_argument("--pose-video", metavar="MP4", help="pose skeleton frames (their size is the output size)")
    g.add_argument("--face-video", metavar="MP4", help="face crops, one per pose frame (512x512 for the release)")
    g.add_argument("--bg-video", metavar="MP4", help="replace: the driving video without the person")
    g.add_argument("--mask-video", metavar="MP4", help="replace: the person's mask (white = person)")
    g.add_argument("--refert-num", type=int, choices=(1, 5), help="frames carried from one clip to the next "
                   "(default 1)")
    g.add_argument("--use-relighting-lora", action="store_true", help="merge the release's relighting_lora.ckpt "
                   "(official --use_relighting_lora, meant for replace)")


def wants_animate(args: argparse.Namespace) -> bool:
    """Whether `wan22 generate` should run Animate: the task says so, an Animate option is given, or the
    checkpoint is an Animate folder."""
    return (args.task == ANIMATE_TASK or any(getattr(args, k, None) not in (None, False) for k in ANIMATE_OPTIONS)
            or (args.task is None and is_animate_folder(args.checkpoint)))


def check_animate_arguments(args: argparse.Namespace) -> dict:
    """The cheap checks and every input file read, before any model loads: the call's keyword arguments."""
    if args.task not in (None, ANIMATE_TASK):
        given = [f"--{k.replace('_', '-')}" for k in ANIMATE_OPTIONS if getattr(args, k, None) not in (None, False)]
        raise InputError(f"{', '.join(given)}: options of --task {ANIMATE_TASK}, not of --task {args.task}")
    for key in NOT_FOR_ANIMATE:
        if getattr(args, key, None) not in (None, False, []):
            raise InputError(f"--{key.replace('_', '-')} is not supported with --task {ANIMATE_TASK}"
                             + (" (the size is the pose video's)" if key == "size" else ""))
    if Path(args.out).suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm", ".gif"):
        raise InputError(f"--out {args.out}: unsupported video extension (use .mp4)")
    if args.fps is not None:
        check_fps(args.fps, "--fps")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps {args.steps}: must be a whole number >= 1")
    if args.guide_scale is not None and len(args.guide_scale) != 1:
        raise InputError(f"--guide-scale: {ANIMATE_TASK} has one DiT, give one value")
    embeds = embeds_from_args(args)
    mode = args.mode or "animate"
    inputs = animate_inputs(src_root=args.src_root, ref_image=args.image, pose_video=args.pose_video,
                            face_video=args.face_video, bg_video=args.bg_video, mask_video=args.mask_video, mode=mode)
    # the frame checks that need no model (lengths, sizes, mode) before it loads; the call checks again with the
    # model's face-crop size and clip length
    mask = inputs["mask_video"]
    mask = mask if mask is None or mask.ndim != 4 else mask[..., 0]
    check_animate_inputs(inputs["ref_image"], inputs["pose_video"], inputs["face_video"], inputs["bg_video"], mask,
                         args.frames or 5, args.refert_num or 1, inputs["face_video"].shape[1], mode == "replace")
    return dict(mode=mode, prompt=args.prompt, negative_prompt=args.negative_prompt, **embeds, clip_len=args.frames,
                refert_num=args.refert_num, num_inference_steps=args.steps, shift=args.shift,
                guidance_scale=None if args.guide_scale is None else args.guide_scale[0], solver=args.solver,
                seed=args.seed, progress=not args.quiet, check_memory=not args.no_memory_check, **inputs)


def main(args: argparse.Namespace) -> int:
    """Runs `wan22 generate` for Animate-14B; errors propagate to `wan22_jax.cli.main`, which prints them."""
    t0 = time.perf_counter()
    call = check_animate_arguments(args)
    kernels = kernels_from_args(args)
    if args.preset:
        if args.use_relighting_lora:
            raise InputError("--use-relighting-lora needs a checkpoint's relighting_lora.ckpt; the tiny-random "
                             "preset has none")
        pipe = random_animate_pipeline(seed=0).with_kernels(kernels)
        if args.mesh:
            pipe = pipe.sharded(args.mesh)
    else:
        if args.checkpoint is None:
            raise InputError(f"--task {ANIMATE_TASK} needs --checkpoint (the Wan2.2-Animate-14B folder) or --preset")
        pipe = AnimatePipeline.from_pretrained(args.checkpoint, dtype=args.dtype, mesh=args.mesh, kernels=kernels,
                                               use_relighting_lora=args.use_relighting_lora,
                                               progress=not args.quiet)
    load_s = time.perf_counter() - t0
    out = pipe(**call)
    save_and_report(out, args.out, args.fps, t0, load_s, f" ({call['mode']})")
    return 0


__all__ = ["ANIMATE_TASK", "add_animate_arguments", "check_animate_arguments", "main", "wants_animate"]
