"""Training batches from a latent cache (training/cache.py), on Grain: one bucket per batch, a deterministic order
from the seed, resumable from the data position the checkpoint stores, each process reading only its own part.

The order is a pure function of (seed, position): epoch e shuffles each bucket's samples with the stream
(seed, e, bucket), cuts them into groups of grad_accum x batch_size samples (a bucket's remainder sits the epoch
out; another one does next epoch) and shuffles the groups with the stream (seed, e). Batch k of the run is group
k of that sequence, so the data position (samples consumed, `state["data_position"]`, what `LatentData.batch`
takes too) is all a resumed run needs.

Multi-host: every process computes the same sequence and reads only its rows of each micro-batch (process p of
P takes rows p*B/P .. (p+1)*B/P - 1), so the processes' parts of a step are disjoint, cover the global batch,
and share its bucket: `jax.make_array_from_process_local_data` assembles them. (Sharding the files per process
instead would let processes pick different buckets for the same step.)
"""

from __future__ import annotations

import functools
from typing import Iterator

import grain
import jax
import numpy as np

from wan22_jax.errors import ConfigError
from wan22_jax.training.cache import CachedDataset

TEXT_MODES = ("context", "ids")
MAX_POSITION = 2 ** 31 - 1  # the checkpoint stores the data position as int32


class BatchSchedule:
    """The sequence of batches: item k is the sample indices [A, B / P] this process reads for batch k.

    Args:
      buckets: a hashable bucket per sample (CachedDataset.buckets).
      batch_size, grad_accum: B (global, over all processes) and A.
      seed: the order's seed.
      process_index, process_count: this process and how many read the same batches.
    """

    def __init__(self, buckets: list, *, batch_size: int, grad_accum: int, seed: int, process_index: int,
                 process_count: int):
        for name, v, low in (("batch_size", batch_size, 1), ("grad_accum", grad_accum, 1),
                             ("process_count", process_count, 1), ("process_index", process_index, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ConfigError(f"{name}={v!r}: must be a whole number >= {low}")
        if process_index >= process_count:
            raise ConfigError(f"process_index={process_index} is not below process_count={process_count}")
        if batch_size % process_count:
            raise ConfigError(f"batch_size={batch_size} does not split over {process_count} processes: use a "
                              "multiple of the process count")
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, int(seed)
        self.process_index, self.process_count = process_index, process_count
        self.group = batch_size * grad_accum
        names = sorted(set(buckets))
        ids = np.asarray([names.index(b) for b in buckets], np.int64)
        self._members = [np.flatnonzero(ids == i) for i in range(len(names))]
        self.batches_per_epoch = sum(len(m) // self.group for m in self._members)
        if self.batches_per_epoch == 0:
            sizes = ", ".join(f"{getattr(b, 'name', b)}: {len(m)}" for b, m in zip(names, self._members))
            raise ConfigError(f"no bucket has {self.group} samples (batch_size x grad_accum) for one batch; "
                              f"samples per bucket: {sizes}")

    def __len__(self) -> int:
        return MAX_POSITION // self.group  # batches before the int32 position overflows

    @functools.lru_cache(maxsize=2)
    def epoch(self, e: int) -> np.ndarray:
        """[batches_per_epoch, A * B] global sample indices of epoch e, in batch order."""
        groups = []
        for b, members in enumerate(self._members):
            perm = np.random.default_rng([self.seed, e, b]).permutation(members)
            n = len(perm) // self.group * self.group
            groups.append(perm[:n].reshape(-1, self.group))
        groups = np.concatenate(groups)
        return groups[np.random.default_rng([self.seed, e]).permutation(len(groups))]

    def global_indices(self, k: int) -> np.ndarray:
        """[A, B] sample indices of batch k (all processes)."""
        if not 0 <= k < len(self):
            raise ConfigError(f"batch {k} is outside the schedule (0 .. {len(self) - 1})")
        e, j = divmod(int(k), self.batches_per_epoch)
        return self.epoch(e)[j].reshape(self.grad_accum, self.batch_size)

    def __getitem__(self, k: int) -> np.ndarray:
        b = self.batch_size // self.process_count
        return self.global_indices(k)[:, self.process_index * b:(self.process_index + 1) * b]


def held_out_batches(data: CachedDataset, *, text: str = "context", chunk: int = 8
                     ) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Every sample of `data` (a held-out split) as evaluation batches of one bucket each, at most `chunk`
    samples per batch, in a fixed order.

    Args:
      data: the samples (CachedDataset(..., split="held_out")).
      text: "context" or "ids", as Loader.
      chunk: samples per batch at most.
    Returns:
      [(bucket name "FxHxW", batch)], batch as one micro-batch of `Loader.batch` without the micro-batch axis:
      {"latents": [n, z, F', h, w], "context", "null_context": [n, L, D]} or {"latents", "ids", "mask",
      "null_ids", "null_mask"}.
    """
    if text not in TEXT_MODES:
        raise ConfigError(f"text={text!r}: use one of {TEXT_MODES}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk={chunk!r}: must be a whole number >= 1")
    names = ("context",) if text == "context" else ("ids", "mask")
    null = data.null()
    out = []
    for bucket in sorted(set(data.buckets), key=lambda b: (b.frames, b.height, b.width)):
        members = [i for i, b in enumerate(data.buckets) if b == bucket]
        for start in range(0, len(members), chunk):
            samples = [data.load(i) for i in members[start:start + chunk]]
            batch = {k: np.stack([s[k] for s in samples]) for k in ("latents", *names)}
            for k in names:
                batch[f"null_{k}"] = np.broadcast_to(null[k], batch[k].shape)
            out.append((bucket.name, batch))
    return out


class Loader:
    """Batches of a latent cache in the form `LatentData.batch` gives them, as numpy arrays.

    Args:
      data: the cache (CachedDataset).
      batch_size: samples per micro-batch over all processes (the run's batch_size); grad_accum: micro-batches.
      seed: the order's seed.
      text: "context" (a frozen encoder's stored contexts) or "ids" (token ids, for an encoder trained with
        the DiT).
      images: add "image_latents" (every sample needs a first-frame image: CachedDataset(require_images=True)).
      process_index, process_count: default jax.process_index() / jax.process_count().
      read_threads, prefetch: Grain's reading threads and buffered batches for `iterator`.
    """

    def __init__(self, data: CachedDataset, *, batch_size: int, grad_accum: int = 1, seed: int = 0,
                 text: str = "context", images: bool = False, process_index: int | None = None,
                 process_count: int | None = None, read_threads: int = 4, prefetch: int = 2):
        if text not in TEXT_MODES:
            raise ConfigError(f"text={text!r}: use one of {TEXT_MODES}")
        if text == "context" and not data.has_context:
            raise ConfigError(f"{data.dir}: the cache stores token ids only (made without a text encoder); "
                              "use text='ids' or re-cache with the encoder")
        if images and not all(r["image"] for r in data.records):
            raise ConfigError(f"{data.dir}: images=True needs a first-frame image for every sample; open the cache "
                              "with CachedDataset(..., require_images=True) to keep only those")
        self.data, self.text, self.images = data, text, images
        self.schedule = BatchSchedule(
            data.buckets, batch_size=batch_size, grad_accum=grad_accum, seed=seed,
            process_index=jax.process_index() if process_index is None else process_index,
            process_count=jax.process_count() if process_count is None else process_count)
        self.read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
        null = data.null()
        names = ("context",) if text == "context" else ("ids", "mask")
        self._null = {n: null[n] for n in names}
        self._dataset = grain.MapDataset.source(self.schedule).map(self._read)

    @property
    def samples_per_batch(self) -> int:
        """grad_accum x batch_size: how far one step moves the data position."""
        return self.schedule.group

    def _read(self, local: np.ndarray) -> dict[str, np.ndarray]:
        a, b = local.shape
        samples = [self.data.load(int(i)) for i in local.reshape(-1)]
        keys = ["latents", *self._null] + (["image_latents"] if self.images else [])
        out = {}
        for k in keys:
            rows = np.stack([s[k] for s in samples])
            out[k] = rows.reshape(a, b, *rows.shape[1:])
        for k, v in self._null.items():
            out[f"null_{k}"] = np.broadcast_to(v, out[k].shape)
        return out

    def _batch_number(self, position: int) -> int:
        position = int(position)
        if position < 0 or position % self.samples_per_batch:
            raise ConfigError(f"data position {position} is not at a batch boundary of this loader (multiples of "
                              f"grad_accum x batch_size = {self.samples_per_batch}); was the run resumed with "
                              "another batch size?")
        return position // self.samples_per_batch

    def indices(self, position: int) -> np.ndarray:
        """[A, B / P] cache indices (into data.records) this process reads for the batch at `position`."""
        return self.schedule[self._batch_number(position)]

    def batch(self, position: int, size: int | None = None, accum: int | None = None) -> dict[str, np.ndarray]:
        """The batch at data position `position` (samples consumed so far), as LatentData.batch:
        {"latents": [A, B/P, z, F', h, w], "context", "null_context": [A, B/P, L, D]} or, with text="ids",
        {"latents", "ids", "mask", "null_ids", "null_mask"} ([A, B/P, L] int32); plus "image_latents"
        [A, B/P, z, 1, h, w] with images=True. `size` and `accum`, if given, must be the loader's."""
        for name, v, mine in (("batch size", size, self.schedule.batch_size),
                              ("grad_accum", accum, self.schedule.grad_accum)):
            if v is not None and v != mine:
                raise ConfigError(f"this loader was built for {name} {mine}, the run asks for {v}")
        return self._dataset[self._batch_number(position)]

    def iterator(self, position: int = 0) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(data position after the batch, batch) from `position` on, read ahead by Grain's threads."""
        start = self._batch_number(position)
        it = iter(self._dataset[start:].to_iter_dataset(self.read_options))
        for k, batch in enumerate(it, start + 1):
            yield k * self.samples_per_batch, batch
