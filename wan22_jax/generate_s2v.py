"""`wan22 generate --task s2v-14B`: a reference image + a speech track (+ a pose video) -> an mp4 with the audio.

    wan22 generate --task s2v-14B --checkpoint Wan2.2-S2V-14B --prompt "a woman singing" \\
        --image ref.png --audio song.wav [--pose-video pose.mp4] [--num-clips 3] --out sing.mp4

`--prompt-embeds` / `--negative-prompt-embeds` FILE (.npy or one-tensor .safetensors) replace the texts. `--size
WxH` is, as in the official generate.py for S2V, the maximum pixel area W * H: the output size follows the image's
aspect ratio, padded to multiples of 64. The options that only the text/image tasks have (LoRAs,
quantisation, VAE tiling, sampler presets, --frames) are refused with one error before anything loads. `--mesh SPEC`
shards the DiT and VAE over the devices (`S2VPipeline.sharded`); `--no-memory-check` skips the memory check.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from wan22_jax.cli_files import embeds_from_args, save_and_report
from wan22_jax.errors import InputError
from wan22_jax.ops.options import kernels_from_args
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.pipeline.s2v import SOLVERS, TASK
from wan22_jax.pipeline.s2v_inputs import is_s2v_folder, read_image, read_pose_video, read_waveform
from wan22_jax.presets_s2v import random_s2v_pipeline
from wan22_jax.video import AUDIO_CODECS, check_fps

S2V_OPTIONS = ("audio", "num_clips", "infer_frames")  # the S2V-only options of `wan22 generate`
# options of `wan22 generate` S2V has no use for, with the value that means "not given" (Animate's included)
_NOT_FOR_S2V = {"frames": None, "sampler_preset": None,
                "lora": [], "weights": None, "vae_tiling": False, "eta": 0.0, "mode": None,
                "src_root": None, "face_video": None, "bg_video": None, "mask_video": None, "refert_num": None,
                "use_relighting_lora": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The S2V options of `wan22 generate` (the others are shared with the text/image tasks)."""
    p.add_argument("--audio", help="s2v-14B: the driving speech/song (wav, flac, ogg, mp3); muxed into --out. "
                   "--pose-video (shared with animate-14B) gives it a DW-pose video, read at 16 fps from the start")
    p.add_argument("--num-clips", type=int, help="s2v-14B: clips to generate (default: as many as the audio covers)")
    p.add_argument("--infer-frames", type=int, help="s2v-14B: frames per clip, a multiple of 4 (default 80)")


def wants_s2v(args: argparse.Namespace) -> bool:
    """Whether `wan22 generate` runs S2V: --task s2v-14B, an S2V-only option given (--pose-video is shared
    with animate-14B, so alone it does not choose S2V), or an S2V checkpoint folder."""
    return (args.task == TASK or any(getattr(args, k, None) is not None for k in S2V_OPTIONS)
            or (args.task is None and is_s2v_folder(args.checkpoint)))


def check_arguments(args: argparse.Namespace) -> dict:
    """The checks before any model loads (files read and decoded); returns the pipeline call's arguments."""
    if args.task not in (None, TASK):
        given = [f"--{k.replace('_', '-')}" for k in S2V_OPTIONS if getattr(args, k) is not None]
        raise InputError(f"{' '.join(given)}: only for --task {TASK} (got --task {args.task})")
    unused = [f"--{k.replace('_', '-')}" for k, v in _NOT_FOR_S2V.items() if getattr(args, k, v) != v]
    if unused:
        raise InputError(f"{', '.join(unused)}: not available for --task {TASK}")
    if args.prompt is None and args.prompt_embeds is None:
        raise InputError(f"--task {TASK} needs --prompt TEXT or --prompt-embeds FILE")
    embeds = embeds_from_args(args)
    if args.image is None:
        raise InputError(f"--task {TASK} needs --image (the reference image)")
    if args.audio is None:
        raise InputError(f"--task {TASK} needs --audio (the speech or song driving the video)")
    if args.solver is not None and args.solver not in SOLVERS:
        raise InputError(f"--solver {args.solver}: S2V runs {' or '.join(SOLVERS)}")
    if args.guide_scale is not None and len(args.guide_scale) != 1:
        raise InputError(f"--guide-scale {args.guide_scale}: S2V has one DiT, give one value")
    if args.fps is not None:
        check_fps(args.fps, "--fps")
    if Path(args.out).suffix.lower() not in AUDIO_CODECS:
        raise InputError(f"--out {args.out}: S2V videos carry the audio track; use one of {sorted(AUDIO_CODECS)}")
    read_image(args.image, "--image")  # a missing or unreadable file is named before the model loads
    read_waveform(args.audio)
    if args.pose_video is not None:
        read_pose_video(args.pose_video)
    max_area = None
    if args.size:
        try:
            width, height = (int(v) for v in args.size.lower().replace("*", "x").split("x"))
        except ValueError:
            raise InputError(f"--size {args.size!r}: expected WxH, e.g. 1280x720") from None
        if width < 1 or height < 1:
            raise InputError(f"--size {args.size!r}: width and height must be positive")
        max_area = width * height
    return dict(prompt=args.prompt, negative_prompt=args.negative_prompt, **embeds, image=args.image, audio=args.audio,
                pose_video=args.pose_video, num_clips=args.num_clips, infer_frames=args.infer_frames,
                max_area=max_area, num_inference_steps=args.steps,
                guidance_scale=None if args.guide_scale is None else args.guide_scale[0], shift=args.shift,
                solver=args.solver or "unipc", seed=args.seed, progress=not args.quiet,
                check_memory=not args.no_memory_check)


def main(args: argparse.Namespace) -> int:
    """Runs `wan22 generate --task s2v-14B`; errors propagate to `wan22_jax.cli.main`, which prints them."""
    t0 = time.perf_counter()
    call = check_arguments(args)
    kernels = kernels_from_args(args)
    if args.preset:
        pipe = random_s2v_pipeline(seed=0)
        if args.mesh:
            pipe = pipe.sharded(args.mesh)
    else:
        pipe = Wan22Pipeline.from_pretrained(args.checkpoint, task=TASK, dtype=args.dtype, mesh=args.mesh,
                                             kernels=kernels, progress=not args.quiet)
    load_s = time.perf_counter() - t0
    out = pipe(**call)
    save_and_report(out, args.out, args.fps, t0, load_s, f" with audio, {out.latents.shape[0]} clip(s)")
    return 0
