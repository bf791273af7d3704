"""`wan22 cache DATA --out DIR`: encode a folder (or manifest) of videos and images once with the frozen VAE and
text encoder, for training (wan22_jax/training/cache.py has the format). Re-running resumes; a cache made with
other models is refused unless --rebuild.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import jax.numpy as jnp
from flax import nnx
from tqdm.auto import tqdm

from wan22_jax.convert.vae import load_vae
from wan22_jax.data.buckets import BucketConfig
from wan22_jax.data.videos import VideoDataset
from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.pipeline.files import default_checkpoint
from wan22_jax.text_encoder import TextEncoder
from wan22_jax.training.cache import CacheWriter

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a folder of videos/images with a .txt caption beside each, or a .jsonl / .csv "
                   "manifest (path, caption, optional image)")
    p.add_argument("--out", required=True, help="the cache folder (created; re-running resumes it)")
    p.add_argument("--checkpoint", help="release folder holding the VAE, the umT5 encoder and its tokenizer "
                   "(default: the embedded mini-world model)")
    p.add_argument("--vae", help="the VAE (.pth, release or Diffusers folder), instead of the checkpoint's")
    p.add_argument("--text-encoder", help="the umT5 encoder (release or Diffusers folder), instead of the "
                   "checkpoint's")
    p.add_argument("--tokenizer", help="the tokenizer folder, instead of the text encoder's")
    p.add_argument("--no-text-encoder", action="store_true", help="store token ids only (for a text encoder "
                   "trained with the DiT)")
    p.add_argument("--text-len", type=int, help="tokens per caption (default: the checkpoint's DiT text_len, "
                   "else 512)")
    p.add_argument("--text-dtype", choices=sorted(DTYPES), default="bfloat16", help="encoder compute dtype "
                   "(the release's bf16 by default)")
    p.add_argument("--area", type=int, default=480 * 832, help="pixels per frame of a bucket (default 480x832)")
    p.add_argument("--patch", type=int, help="the DiT's spatial patch (default: the checkpoint's, else 2)")
    p.add_argument("--stride", type=int, help="bucket sides are multiples of this (default: VAE stride x patch)")
    p.add_argument("--max-aspect", type=float, default=2.0, help="longest / shortest side of a bucket at most")
    p.add_argument("--frames", default="81", help="comma list of clip lengths, each 1 + 4k (default 81)")
    p.add_argument("--fps", default="16", help="sample clips at this frame rate, or 'source' for every frame")
    p.add_argument("--no-images", action="store_true", help="leave still images out")
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard file")
    p.add_argument("--rebuild", action="store_true", help="re-encode a cache made with other models or buckets")
    p.add_argument("--no-progress", action="store_true")


def _dit_config(ckpt: Path | None) -> dict:
    cfg = ckpt / "config.json" if ckpt is not None else None
    if cfg is None or not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _buckets(args, vae_stride: int, dit: dict) -> BucketConfig:
    try:
        frames = tuple(int(f) for f in args.frames.split(","))
    except ValueError:
        raise InputError(f"--frames {args.frames!r}: a comma list of whole numbers, e.g. 33,81") from None
    try:
        fps = None if args.fps == "source" else float(args.fps)
    except ValueError:
        raise InputError(f"--fps {args.fps!r}: a frame rate or 'source'") from None
    patch = args.patch if args.patch is not None else (dit.get("patch_size") or [1, 2, 2])[-1]
    stride = args.stride if args.stride is not None else vae_stride * patch
    try:
        return BucketConfig(area=args.area, stride=stride, max_aspect=args.max_aspect, frames=frames, fps=fps,
                            images=not args.no_images)
    except ConfigError as e:
        raise InputError(str(e).replace("buckets.", "--").replace("_", "-")) from None


def main(args: argparse.Namespace) -> int:
    """Runs `wan22 cache`; prints what was encoded and what was skipped (and why). Returns 0."""
    if args.shard_size < 1:
        raise InputError(f"--shard-size {args.shard_size}: must be >= 1")
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is None and not (args.vae and (args.text_encoder or args.no_text_encoder) and
                             (args.tokenizer or args.text_encoder)):
        ckpt = default_checkpoint()
    dit = _dit_config(ckpt)
    text_len = args.text_len if args.text_len is not None else int(dit.get("text_len", 512))
    vae_model = load_vae(args.vae or ckpt)
    text_path = args.text_encoder or ckpt
    if args.no_text_encoder:
        text, tokenizer = None, Tokenizer(args.tokenizer or text_path, text_len=text_len)
    else:
        dtype = DTYPES[args.text_dtype]
        text = TextEncoder.from_pretrained(text_path, text_len=text_len, dtype=dtype, param_dtype=dtype,
                                           tokenizer_path=args.tokenizer, cache_size=0)
        tokenizer = text.tokenizer
    buckets = _buckets(args, vae_model.config.spatial_stride, dit)
    dataset = VideoDataset(args.data, buckets)
    writer = CacheWriter(args.out, vae=nnx.split(vae_model), tokenizer=tokenizer, text_encoder=text,
                         buckets=buckets, rebuild=args.rebuild)
    with tqdm(total=len(dataset), desc="caching", unit="file", disable=args.no_progress) as bar:
        result = writer.run(dataset, shard_size=args.shard_size, progress=bar.update)
    for key, reason, detail in dataset.report.items:
        print(f"skipped {key}: {reason} ({detail})" if detail else f"skipped {key}: {reason}", file=sys.stderr)
    sizes = collections.Counter("x".join(map(str, r["bucket"])) for r in writer.manifest["samples"])
    print(f"{result['encoded']} sample(s) encoded, {result['cached']} already cached, "
          f"{dataset.report.summary()}; {result['total']} in {args.out} over {len(sizes)} bucket(s): "
          + ", ".join(f"{b} ({n})" for b, n in sorted(sizes.items())))
    return 0
