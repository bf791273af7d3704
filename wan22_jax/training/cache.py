"""The latent cache: every training sample encoded once by the frozen VAE and text encoder (`wan22 cache`).

    cache_dir/
      manifest.json               format, model hashes, bucket config, one record per sample, the skip report
      null.safetensors            the empty prompt ("" is the null condition of classifier-free guidance)
      shard-00000.safetensors     per sample j of the shard: "j.latents" [z, F', h, w] float32,
      shard-00001.safetensors       "j.context" [n, D] float32 (the prompt's n token rows, as TextEncoder.encode
      ...                           trims them), "j.ids" / "j.mask" [text_len] int32, "j.image_latents" [z, 1, h, w]

Every file is written atomically (io/atomic.py) and the manifest is rewritten after each shard, so an interrupted
run leaves a consistent cache and re-running resumes: a sample whose key, caption and file size are in the
manifest is not encoded again. The manifest records hashes of the VAE weights, the text encoder weights and the
tokenizer files, and the bucket config; a cache made with different ones is refused with a message naming what
changed (rebuild=True starts it over).

Samples are encoded one process; splitting the work over the processes of a multi-host run is not done.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from wan22_jax.config_utils import config_to_dict
from wan22_jax.data.buckets import Bucket
from wan22_jax.data.videos import MISSING_FILE, Clip, SampleError, VideoDataset
from wan22_jax.errors import ConfigError, InputFileError
from wan22_jax.io.atomic import atomic_path
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.models.vae import encode
from wan22_jax.state import flat_state
from wan22_jax.text_encoder import TextEncoder, encode_zero_padded

FORMAT = "wan22-latent-cache"
VERSION = 1
MANIFEST = "manifest.json"
NULL = "null.safetensors"


# ----------------------------------------------------------------------------------------------- identities
def state_hash(state: nnx.State) -> str:
    """sha256 of a model's weights (paths, shapes, dtypes and bytes), independent of where they were loaded."""
    h = hashlib.sha256()
    for path, leaf in sorted(flat_state(state).items()):
        a = np.asarray(leaf)
        h.update(f"{path}|{a.shape}|{a.dtype}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer folder's files and text_len."""
    h = hashlib.sha256(f"text_len={tokenizer.text_len}|".encode())
    for f in sorted(p for p in Path(tokenizer.path).iterdir() if p.is_file()):
        h.update(f.name.encode() + b"|" + f.read_bytes())
    return h.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    """The cache's manifest.json; InputFileError if there is none or it is not a cache of this format."""
    path = Path(cache_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"{cache_dir}: no latent cache here (no {MANIFEST}); make one with `wan22 cache`"
                             ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"{path}: cannot read the cache manifest ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise InputFileError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
    return data


def _mismatch(cache_dir: Path, old: dict, new: dict) -> str | None:
    """What differs between the identities of an existing cache and of this run, in words (None: nothing)."""
    names = {"vae": "VAE weights", "text_encoder": "text encoder weights", "tokenizer": "tokenizer",
             "buckets": "bucket config"}
    changed = [n for n in names if old.get(n) != new.get(n)]
    if not changed:
        return None
    what = ", ".join(f"{names[n]} ({_short(old.get(n))} -> {_short(new.get(n))})" for n in changed)
    return (f"{cache_dir}: this cache was made with different {what}; its latents do not match the models given "
            "now. Re-encode it with --rebuild (rebuild=True), or write to another folder")


def _short(v) -> str:
    return v[:12] if isinstance(v, str) else json.dumps(v, sort_keys=True)


# ----------------------------------------------------------------------------------------------- writing
class CacheWriter:
    """Encodes samples into a cache folder, resuming what a previous run did.

    Args:
      cache_dir: the folder.
      vae: (graphdef, state) of the frozen VAE (`nnx.split(load_vae(path))`).
      tokenizer: the tokenizer (ids and masks are always stored: a text encoder trained with the DiT needs them).
      text_encoder: the frozen encoder whose contexts are stored, or None to store token ids only.
      buckets: the dataset's BucketConfig (part of the cache's identity).
      rebuild: delete an existing cache of other models instead of refusing it.
    """

    def __init__(self, cache_dir: str | os.PathLike, *, vae: tuple, tokenizer: Tokenizer,
                 text_encoder: TextEncoder | None, buckets, rebuild: bool = False):
        self.dir = Path(cache_dir)
        self.vae = vae
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self._t5 = None if text_encoder is None else nnx.split(text_encoder.model())
        self.identity = {
            "vae": state_hash(vae[1]),
            "text_encoder": None if text_encoder is None else state_hash(self._t5[1]),
            "tokenizer": tokenizer_hash(tokenizer),
            "buckets": config_to_dict(buckets),
        }
        self.manifest = {"format": FORMAT, "version": VERSION, **self.identity, "text_len": tokenizer.text_len,
                         "shards": [], "samples": [], "skipped": {}}
        if (self.dir / MANIFEST).is_file():
            old = read_manifest(self.dir)
            problem = _mismatch(self.dir, old, self.identity)
            if problem and not rebuild:
                raise ConfigError(problem)
            if problem:
                self._clear()
            else:
                self.manifest = old
        self.dir.mkdir(parents=True, exist_ok=True)

    def _clear(self) -> None:
        """Removes this format's files only (never anything else a user put in the folder)."""
        for f in [self.dir / MANIFEST, self.dir / NULL, *self.dir.glob("shard-*.safetensors")]:
            f.unlink(missing_ok=True)

    def _text(self, captions: list[str]) -> list[dict[str, np.ndarray]]:
        ids, mask = self.tokenizer(captions)
        rows = [{"ids": ids[i], "mask": mask[i]} for i in range(len(captions))]
        if self.text_encoder is not None:
            # the function TextEncoder runs, on these ids (tokenized once), one caption per call: a sample's
            # context does not depend on which others share its shard (another batch size is another program,
            # which may round differently)
            for row in rows:
                out = encode_zero_padded(*self._t5, jnp.asarray(row["ids"][None]), jnp.asarray(row["mask"][None]))
                row["context"] = np.asarray(out[0, :int(row["mask"].sum())], np.float32)
        return rows

    def _encode_video(self, video: np.ndarray) -> np.ndarray:
        graphdef, state = self.vae
        return np.asarray(encode(graphdef, state, jnp.asarray(video[None])), np.float32)[0]

    def _flush(self, pending: list[tuple[Clip, int, np.ndarray, np.ndarray | None]]) -> None:
        """Encodes the pending captions, writes one shard, then the manifest that lists it."""
        if not pending:
            return
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        texts = self._text([clip.sample.caption for clip, *_ in pending])
        tensors, records = {}, []
        for j, ((clip, size, lat, img), text) in enumerate(zip(pending, texts)):
            tensors[f"{j}.latents"] = lat
            tensors.update({f"{j}.{k}": v for k, v in text.items()})
            if img is not None:
                tensors[f"{j}.image_latents"] = img
            records.append({"key": clip.sample.key, "shard": name, "index": j, "bucket": list(
                (clip.bucket.frames, clip.bucket.height, clip.bucket.width)), "latent_shape": list(lat.shape),
                "caption": clip.sample.caption, "caption_hash": text_hash(clip.sample.caption), "bytes": size,
                "tokens": int(text["mask"].sum()), "image": img is not None})
        with atomic_path(self.dir / name) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
        replaced = {r["key"] for r in records}
        self.manifest["samples"] = [r for r in self.manifest["samples"] if r["key"] not in replaced] + records
        self.manifest["shards"].append(name)
        _write_json(self.dir / MANIFEST, self.manifest)
        pending.clear()

    def _one(self, dataset: VideoDataset, sample, done: dict, pending: list) -> str:
        """Encodes one sample into `pending` unless it is cached already; "encoded", "cached" or "skipped"."""
        try:
            size = sample.path.stat().st_size
        except OSError as e:  # removed since the listing
            dataset.report.add(sample.key, MISSING_FILE, str(e))
            return "skipped"
        if done.get(sample.key) == (text_hash(sample.caption), size):
            return "cached"
        try:
            clip = dataset.load(sample)
        except SampleError as e:
            dataset.report.add(sample.key, e.reason, e.detail)
            return "skipped"
        img = None if clip.image is None else self._encode_video(clip.image)
        pending.append((clip, size, self._encode_video(clip.video), img))
        return "encoded"

    def run(self, dataset: VideoDataset, *, shard_size: int = 64,
            progress: Callable[[int], Any] | None = None) -> dict:
        """Encodes every sample of `dataset` not cached yet.

        Args:
          dataset: the samples (VideoDataset); its skip report collects the files left out.
          shard_size: samples per shard file.
          progress: called with 1 after each sample (e.g. a tqdm bar's update).
        Returns:
          {"encoded": new samples, "cached": samples found already done, "skipped": dataset.report.to_dict(),
           "total": samples in the cache}.
        """
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"shard_size={shard_size!r}: must be a whole number >= 1")
        if not (self.dir / NULL).is_file():
            (null,) = self._text([""])
            with atomic_path(self.dir / NULL) as tmp:
                save_file(null, tmp)
        done = {r["key"]: (r["caption_hash"], r["bytes"]) for r in self.manifest["samples"]}
        pending: list = []
        counts = {"encoded": 0, "cached": 0, "skipped": 0}
        for sample in dataset.samples:
            counts[self._one(dataset, sample, done, pending)] += 1
            if len(pending) >= shard_size:
                self._flush(pending)
            if progress is not None:
                progress(1)
        self._flush(pending)
        self.manifest["skipped"] = dataset.report.to_dict()
        _write_json(self.dir / MANIFEST, self.manifest)
        return {"encoded": counts["encoded"], "cached": counts["cached"], "skipped": dataset.report.to_dict(),
                "total": len(self.manifest["samples"])}


# ----------------------------------------------------------------------------------------------- reading
class CachedDataset:
    """Random access to a cache's samples, sorted by key (so the order does not depend on how runs resumed).

    Args:
      cache_dir: a folder written by CacheWriter / `wan22 cache`.
      require_images: keep only samples with a first-frame image latent (image-to-video training).
      held_out, split: set `held_out` samples apart for evaluation: the ones whose keys hash lowest (the same on
        every run and host for the same cache, and spread over its folders and buckets); split="train" keeps
        the others, split="held_out" those.
    Attributes:
      records: the manifest's sample records; buckets: Bucket of each; text_len; has_context: whether contexts
        were stored (else only token ids).
    """

    def __init__(self, cache_dir: str | os.PathLike, *, require_images: bool = False, held_out: int = 0,
                 split: str = "train"):
        self.dir = Path(cache_dir)
        self.manifest = read_manifest(self.dir)
        if split not in ("train", "held_out"):
            raise ConfigError(f"split={split!r}: use 'train' or 'held_out'")
        records = self.manifest["samples"]
        if require_images:
            records = [r for r in records if r["image"]]
        if not isinstance(held_out, int) or not 0 <= held_out < len(records):
            raise ConfigError(f"held_out={held_out!r}: must be a whole number from 0 to {len(records) - 1} (the "
                              f"cache has {len(records)} usable samples)")
        by_hash = sorted(records, key=lambda r: text_hash(r["key"]))
        records = by_hash[:held_out] if split == "held_out" else by_hash[held_out:]
        records = sorted(records, key=lambda r: r["key"])
        if not records:
            raise ConfigError(f"{self.dir}: the cache holds no sample" + (" with a first-frame image"
                                                                          if require_images else "")
                              + (" held out (held_out=0)" if split == "held_out" else ""))
        self.records = records
        self.buckets = [Bucket(*r["bucket"]) for r in records]
        self.text_len = int(self.manifest["text_len"])
        self.has_context = self.manifest["text_encoder"] is not None
        self._null = self._read(NULL, "")

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, name: str, prefix: str) -> dict[str, np.ndarray]:
        with safe_open(self.dir / name, framework="numpy") as f:
            out = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        if "context" in out:  # zero rows past the prompt, as TextEncoder.__call__ pads them
            ctx = out["context"]
            out["context"] = np.concatenate([ctx, np.zeros((self.text_len - len(ctx), ctx.shape[1]), ctx.dtype)])
        return out

    def load(self, i: int) -> dict[str, np.ndarray]:
        """Sample i: {"latents": [z, F', h, w], "ids", "mask": [text_len], "context": [text_len, D] (if stored),
        "image_latents": [z, 1, h, w] (if it has an image)}."""
        r = self.records[i]
        return self._read(r["shard"], f"{r['index']}.")

    def null(self) -> dict[str, np.ndarray]:
        """The empty prompt's {"ids", "mask", "context"} (what classifier-free guidance drops captions to)."""
        return self._null

    def check(self, *, z_dim: int, text_dim: int | None, text_len: int) -> None:
        """ConfigError unless the cache fits a DiT with these input sizes (in_dim, text_dim, text_len)."""
        z = self.records[0]["latent_shape"][0]
        if z != z_dim:
            raise ConfigError(f"{self.dir}: cached latents have {z} channels, the DiT's in_dim is {z_dim}")
        if text_len != self.text_len:
            raise ConfigError(f"{self.dir}: cached text is {self.text_len} tokens long, the DiT's text_len is "
                              f"{text_len}")
        if text_dim is not None and self.has_context:
            d = self._null["context"].shape[1]
            if d != text_dim:
                raise ConfigError(f"{self.dir}: cached contexts have {d} features, the DiT's text_dim is "
                                  f"{text_dim}")
