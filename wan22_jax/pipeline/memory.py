"""The memory check before a run: what a request needs against what the devices have free.

Two estimates, cheapest first, so that a request that cannot fit is refused in seconds rather than dying mid-run:
* `lower_bound`: arithmetic on the shapes alone (a few latent-sized buffers of the loop and the decoded video),
  checked before anything is compiled;
* the compiled loop's own memory plan (`denoise.program_memory`: XLA's `memory_analysis` of the programs that
  will run, which stay cached for the run).
Available memory is the free device memory on accelerators (`Device.memory_stats`) and, on the CPU, the RAM the
OS reports as available (psutil when installed, else sysconf), capped by a cgroup memory limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import jax

from wan22_jax.errors import InsufficientMemoryError

try:  # optional: a better "available" figure than sysconf's free pages (it counts reclaimable caches)
    import psutil
except ImportError:  # pragma: no cover - psutil is usually present
    psutil = None

GIB = 2**30
# latent-sized float32 buffers alive at once in the loop: the sample, the noise it started from, the two CFG
# velocities and the multistep sampler's history (UniPC keeps two data predictions)
LOOP_BUFFERS = 6


def _cgroup_free() -> int | None:
    """Bytes left under a cgroup v2 memory limit, or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_bytes(devices) -> tuple[int | None, str]:
    """(free bytes on the most loaded of `devices`, a description); None where the backend reports nothing.

    Args:
      devices: the jax devices a run uses (the mesh's, or [jax.devices()[0]]).
    """
    dev = devices[0]
    if dev.platform == "cpu":
        if psutil is not None:
            free = int(psutil.virtual_memory().available)
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        cg = _cgroup_free()
        return (free if cg is None else min(free, cg)), "RAM"
    frees = []
    for d in devices:
        stats = d.memory_stats() or {}
        if "bytes_limit" not in stats:
            return None, f"{dev.platform} memory"
        frees.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return min(frees), f"{dev.device_kind} memory"


def lower_bound(batch: int, latent_shape, num_frames: int, height: int, width: int, decode: bool) -> int:
    """Bytes a run needs at least, from shapes alone: LOOP_BUFFERS float32 latents of the batch and, when the
    video is decoded, the float32 video [B, 3, F, H, W] (the decoder's output, before quantisation)."""
    latents = LOOP_BUFFERS * 4 * batch * math.prod(latent_shape)
    video = 4 * batch * 3 * num_frames * height * width if decode else 0
    return latents + video


def refuse_clip_loop(devices, what: str, latent_shape, decoded_frames: int, height: int, width: int,
                     video_frames: int, *, sharded: bool, smaller: tuple[str, ...]) -> int:
    """The shape-only check of a clip-after-clip run (S2V-14B, Animate-14B), before anything runs: on the devices
    one clip's loop buffers and its decoded frames (`lower_bound` of batch 1); in host memory the float32 video of
    every clip, kept there until the last clip is done (on the CPU backend both count against the same RAM). The
    weights are not counted: they are loaded already, so the free memory compared with has them subtracted.

    Args:
      devices: the run's devices; what: the request in words. latent_shape: (z, F', h, w) of one clip;
      decoded_frames: the frames one decode returns; height, width: the output size in pixels; video_frames:
      the frames of the whole output video. sharded, smaller: as `refuse_if_too_big` (no VAE tiling to suggest).
    Returns:
      The bytes needed on the devices. Raises InsufficientMemoryError.
    """
    clip = lower_bound(1, latent_shape, decoded_frames, height, width, True)
    video = 4 * 3 * video_frames * height * width
    if devices[0].platform == "cpu":
        clip += video
    else:
        refuse_if_too_big(video, jax.devices("cpu")[:1], f"the video of {what}", tiled=False, sharded=True,
                          smaller=smaller, can_tile=False)
    refuse_if_too_big(clip, devices, what, tiled=False, sharded=sharded, smaller=smaller, can_tile=False)
    return clip


def refuse_if_too_big(need: int, devices, what: str, *, tiled: bool, sharded: bool,
                      smaller: tuple[str, ...] = ("fewer frames", "a smaller size"), can_tile: bool = True) -> None:
    """Raises InsufficientMemoryError when `need` bytes exceed what `devices` have free.

    Args:
      need: bytes; devices: as `available_bytes`; what: the request in words ("64x64, 5 frames").
      tiled / sharded: whether VAE tiling and a mesh are already on (not suggested again).
      smaller: the smaller requests to suggest first; can_tile: whether the pipeline has VAE tiling at all.
    """
    free, where = available_bytes(devices)
    if free is None or need <= free:
        return
    tries = list(smaller)
    if can_tile and not tiled:
        tries.append("VAE tiling (--vae-tiling, pipe.with_vae_tiling())")
    if not sharded or len(devices) > 1:
        tries.append("a mesh over more devices (--mesh, pipe.sharded(...))")
    raise InsufficientMemoryError(f"{what} needs {need / GIB:.1f} GiB, {free / GIB:.1f} GiB {where} available; "
                                  f"try {', '.join(tries)}")
