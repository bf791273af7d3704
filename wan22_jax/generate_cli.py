"""`wan22 generate`: one video from a prompt (and an image), written as mp4.

Every option is checked before the model loads where it can be (frames, size, fps, files), and the call's own
checks run before any compute; a mistake prints one `error: ...` line and exits with 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wan22_jax import animate_cli, generate_s2v
from wan22_jax.bench.timing import peak_bytes
from wan22_jax.cli_files import read_embeds
from wan22_jax.conditioning import check_frames
from wan22_jax.configs import DTYPE_NAMES, TASK_FILE, TASKS, get_task, load_task_file
from wan22_jax.errors import InputError, InputFileError
from wan22_jax.lora.apply import expert_names
from wan22_jax.lora.load import read_lora
from wan22_jax.ops.options import add_kernel_arguments, kernels_from_args
from wan22_jax.ops.quant import WEIGHT_MODES
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.pipeline.files import default_checkpoint
from wan22_jax.presets import PRESETS, random_pipeline
from wan22_jax.samplers.presets import SAMPLER_PRESETS, preset_names
from wan22_jax.video import check_fps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=sorted([*TASKS, animate_cli.ANIMATE_TASK, generate_s2v.TASK]),
                   help="default: inferred from the checkpoint (tiny-random: ti2v-5B)")
    p.add_argument("--prompt", help="the text (or give --prompt-embeds)")
    p.add_argument("--prompt-embeds", metavar="FILE", help="text-encoder output [L, text_dim] (or [1, L, text_dim])"
                   " as .safetensors (one tensor) or .npy, instead of --prompt")
    p.add_argument("--negative-prompt", help="default: the task's (official tasks: the official negative prompt; "
                   "the mini-world model: the empty prompt)")
    p.add_argument("--negative-prompt-embeds", metavar="FILE", help="as --prompt-embeds, for the negative prompt")
    p.add_argument("--image", help="first frame (i2v-A14B, ti2v-5B)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="official release folder or our converted folder (default: the "
                     "embedded model)")
    src.add_argument("--preset", choices=PRESETS, help="random weights of a tiny model of the task's architecture")
    p.add_argument("--size", help="WxH in pixels, e.g. 1280x704 (default: the task's)")
    p.add_argument("--frames", type=int, help="1 + 4k frames (default: the task's)")
    p.add_argument("--steps", type=int)
    p.add_argument("--solver", help="unipc (default), dpm++, euler, heun, rk4, ddim, dpm++-sde")
    p.add_argument("--sampler-preset", choices=preset_names(), help="a named recipe (sampler, steps, shift, "
                   "guidance) such as the 4-step distillation LoRAs' lightning-4step; --steps/--shift/"
                   "--guide-scale still override it")
    p.add_argument("--shift", type=float)
    p.add_argument("--guide-scale", type=float, nargs="+", help="one value, or low-noise high-noise for A14B")
    p.add_argument("--eta", type=float, default=0.0, help="noise re-injection of --solver ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="DiT dtype (default: the checkpoint task's: bf16 "
                   "for releases, fp32 for the embedded mini-world model)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH][@high|@low]",
                   help="a LoRA safetensors file (diffusers/PEFT, ComfyUI, LightX2V, musubi/kohya or `wan22 train`'s), "
                   "merged before generating (see --lora-unmerged); STRENGTH default 1.0; @high/@low: one expert "
                   "of an A14B model (default: every expert). Repeat for several")
    p.add_argument("--lora-unmerged", action="store_true", help="apply every --lora inside each denoising step "
                   "(x @ W + s (x @ A) @ B on the base weights) instead of merging it: the same video up to float "
                   "rounding, some cost per step; needed for --lora-schedule. Not with --weights")
    p.add_argument("--lora-schedule", metavar="S1,S2,...", help="with --lora-unmerged: one strength per sampling "
                   "step (as many as the generation's steps), e.g. 1,1,0,0 for a LoRA on the first two of four "
                   "steps; each --lora's STRENGTH multiplies it")
    p.add_argument("--lora-skip-unknown-keys", action="store_true", help="warn about and skip the keys of a --lora "
                   "file that name no parameter of the DiT (default: an error naming them)")
    p.add_argument("--weights", choices=WEIGHT_MODES, help="weight-only quantisation of the DiT and text encoder "
                   "Linears (one scale per output channel): int8 or fp8 (e4m3); default: the checkpoint's dtype")
    p.add_argument("--vae-tiling", action="store_true", help="decode in overlapping spatial tiles")
    p.add_argument("--mesh", metavar="SPEC", help="shard over a device mesh, e.g. fsdp=4,seq=2 (axes data, fsdp, "
                   "seq, tensor; the product must equal the device count)")
    generate_s2v.add_arguments(p)
    add_kernel_arguments(p)
    p.add_argument("--out", default="out.mp4")
    p.add_argument("--fps", type=int, help="default: the task's (16 or 24)")
    p.add_argument("--no-memory-check", action="store_true", help="skip comparing the compiled run's memory "
                   "with the free memory before running")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    animate_cli.add_animate_arguments(p)


def parse_size(text: str) -> tuple[int, int]:
    """"WxH" (also "W*H") -> (width, height); InputError otherwise."""
    try:
        width, height = (int(v) for v in text.lower().replace("*", "x").split("x"))
    except ValueError:
        raise InputError(f"--size {text!r}: expected WxH, e.g. 1280x704") from None
    return width, height


def parse_lora(text: str) -> tuple[Path, float, str | None]:
    """"PATH[:STRENGTH][@high|@low]" -> (path, strength, expert); the file must exist. InputError otherwise."""
    spec, expert = text, None
    head, at, tail = spec.rpartition("@")
    if at and tail in ("high", "low"):
        spec, expert = head, tail
    strength = 1.0
    head, colon, tail = spec.rpartition(":")
    if colon and not Path(spec).is_file():
        try:
            strength = float(tail)
        except ValueError:
            raise InputError(f"--lora {text!r}: strength {tail!r} is not a number (PATH[:STRENGTH][@high|@low])"
                             ) from None
        spec = head
        if not np.isfinite(strength):
            raise InputError(f"--lora {text!r}: strength must be a finite number")
    if not Path(spec).is_file():
        raise InputFileError(f"--lora {spec}: no such file (the syntax is PATH[:STRENGTH][@high|@low])")
    return Path(spec), strength, expert


def parse_schedule(text: str) -> np.ndarray:
    """"S1,S2,..." (--lora-schedule) -> [steps] float64 strengths; InputError for an empty entry, a non-number or
    a non-finite value."""
    values = []
    for item in text.split(","):
        try:
            v = float(item)
        except ValueError:
            raise InputError(f"--lora-schedule {text!r}: {item.strip()!r} is not a number (one strength per step, "
                             "comma-separated, e.g. 1,1,0,0)") from None
        if not np.isfinite(v):
            raise InputError(f"--lora-schedule {text!r}: {item.strip()!r} is not a finite number")
        values.append(v)
    return np.asarray(values, np.float64)


def check_lora_options(args: argparse.Namespace) -> np.ndarray | None:
    """--lora-unmerged / --lora-schedule against the other options, before anything loads.

    Returns:
      The schedule ([steps] float64), or None without --lora-schedule.
    """
    if args.lora_schedule is not None and not args.lora_unmerged:
        raise InputError("--lora-schedule needs --lora-unmerged (a merged LoRA has one strength for every step)")
    if args.lora_unmerged and not args.lora:
        raise InputError("--lora-unmerged: give the LoRA(s) with --lora PATH")
    if args.lora_unmerged and args.weights:
        raise InputError(f"--lora-unmerged with --weights {args.weights}: quantised weights take merged LoRAs "
                         "only (drop --lora-unmerged)")
    return None if args.lora_schedule is None else parse_schedule(args.lora_schedule)


def planned_steps(args: argparse.Namespace) -> int | None:
    """The generation's step count as far as the options tell it before the model loads: --steps, the sampler
    preset's, else the task's default (--task, --preset's, or the checkpoint folder's task.json); None when
    only the loaded checkpoint knows (an official release folder without --task)."""
    if args.steps is not None:
        return args.steps
    preset = SAMPLER_PRESETS.get(args.sampler_preset or args.solver or "")
    if preset is not None:
        return preset.steps
    if args.task is not None or args.preset:
        return get_task(args.task or "ti2v-5B").sample_steps
    folder = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    if (folder / TASK_FILE).is_file():
        return load_task_file(folder / TASK_FILE).sample_steps
    return None


def check_schedule_length(schedule: np.ndarray, steps: int) -> None:
    """InputError unless --lora-schedule has one strength per sampling step."""
    if schedule.shape[0] != steps:
        raise InputError(f"--lora-schedule: {schedule.shape[0]} strengths for a generation of {steps} steps "
                         "(give one per step, or change --steps)")


def load_loras(pipe: Wan22Pipeline, specs: list[tuple[Path, float, str | None]], strict: bool = True,
               merge: bool = True, schedule: np.ndarray | None = None) -> Wan22Pipeline:
    """Every --lora read and checked against the pipeline first, then added in order.

    Args:
      pipe: the pipeline. specs: (path, strength, expert) per --lora (`parse_lora`). strict: an unknown key is
        an error (False: a warning, skipped).
      merge: merge into the weights (False: applied inside every denoising step, `Wan22Pipeline.load_lora`).
      schedule: unmerged only: [steps] per-step strengths, multiplied by each LoRA's strength.
    Returns:
      The new pipeline.
    """
    weights = []
    for path, strength, expert in specs:
        expert_names(pipe.experts, expert)
        weights.append((read_lora(path, pipe.dit_config, strict=strict), strength, expert))
    for w, strength, expert in weights:
        s = strength if schedule is None else strength * schedule
        pipe = pipe.load_lora(w, strength=s, expert=expert, merge=merge)
    return pipe


def read_image(path: str) -> Image.Image:
    """The --image file, opened and decoded (a missing or unreadable file is named)."""
    if not Path(path).is_file():
        raise InputFileError(f"--image {path}: no such file")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise InputFileError(f"--image {path}: not a readable image ({e})") from e


def check_arguments(args: argparse.Namespace) -> dict:
    """The cheap checks, before any model loads: the call's keyword arguments read from the options."""
    if args.prompt is None and args.prompt_embeds is None:
        raise InputError("give --prompt TEXT or --prompt-embeds FILE")
    if args.frames is not None:
        check_frames(args.frames)
    if args.fps is not None:
        check_fps(args.fps, "--fps")
    if args.solver is not None and args.sampler_preset is not None:
        raise InputError(f"--solver {args.solver} and --sampler-preset {args.sampler_preset}: give one (the preset "
                         "names its sampler)")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps {args.steps}: must be a whole number >= 1")
    if Path(args.out).suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm", ".gif"):
        raise InputError(f"--out {args.out}: unsupported video extension (use .mp4)")
    width, height = parse_size(args.size) if args.size else (None, None)
    scale = None
    if args.guide_scale:
        scale = args.guide_scale[0] if len(args.guide_scale) == 1 else tuple(args.guide_scale)
    return dict(prompt=args.prompt, negative_prompt=args.negative_prompt,
                prompt_embeds=None if args.prompt_embeds is None else read_embeds(args.prompt_embeds,
                                                                                  "--prompt-embeds"),
                negative_prompt_embeds=(None if args.negative_prompt_embeds is None
                                        else read_embeds(args.negative_prompt_embeds, "--negative-prompt-embeds")),
                image=None if args.image is None else read_image(args.image), num_frames=args.frames,
                height=height, width=width, num_inference_steps=args.steps, guidance_scale=scale,
                solver=args.sampler_preset or args.solver or "unipc", shift=args.shift, eta=args.eta,
                seed=args.seed, progress=not args.quiet, check_memory=not args.no_memory_check)


def main(args: argparse.Namespace) -> int:
    """Runs `wan22 generate`; the package's errors propagate to `wan22_jax.cli.main`, which prints them."""
    schedule = check_lora_options(args)  # first: S2V and Animate refuse --lora, which these options need
    if generate_s2v.wants_s2v(args):
        return generate_s2v.main(args)
    if animate_cli.wants_animate(args):
        return animate_cli.main(args)
    t0 = time.perf_counter()
    call = check_arguments(args)
    loras = [parse_lora(text) for text in args.lora]
    steps = planned_steps(args)
    if schedule is not None and steps is not None:
        check_schedule_length(schedule, steps)
    kernels = kernels_from_args(args)
    if args.preset:
        pipe = random_pipeline(args.task or "ti2v-5B", seed=0).with_kernels(kernels)
        if args.mesh:
            pipe = pipe.sharded(args.mesh)
    else:
        pipe = Wan22Pipeline.from_pretrained(args.checkpoint, task=args.task, mesh=args.mesh, dtype=args.dtype,
                                             kernels=kernels, progress=not args.quiet)
    if schedule is not None and steps is None:  # the task came from the checkpoint: still before any compile
        check_schedule_length(schedule, pipe.task.sample_steps)
    pipe = load_loras(pipe, loras, strict=not args.lora_skip_unknown_keys, merge=not args.lora_unmerged,
                      schedule=schedule)
    if args.weights:
        pipe = pipe.quantized(args.weights)
    if args.vae_tiling:
        pipe = pipe.with_vae_tiling()
    load_s = time.perf_counter() - t0
    out = pipe(**call)
    path = out.videos[0].save(args.out, fps=args.fps)
    frames = out.videos[0].frames
    total = time.perf_counter() - t0
    print(f"wrote {Path(path).resolve()}: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, "
          f"load {load_s:.1f}s, denoise {out.denoise_s:.1f}s, total {total:.1f}s, "
          f"peak memory {peak_bytes() / 2**30:.2f} GiB")
    return 0
