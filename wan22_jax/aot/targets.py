"""Compile targets of `wan22 aot`: NVIDIA GPUs and TPU slices, as device lists made without the hardware.

A target name is `h100`, `h200`, `a100-80g`, `l40s` (48 GB) or `rtx4090`, optionally `xN` for N GPUs of one host
(`h100x8`), or a Cloud TPU accelerator type `v5e-N`, `v5p-N`, `v6e-N`, `tpu7x-N` (N as Cloud TPU counts it: chips
for v5e/v6e, TensorCores for v5p and tpu7x). Several TPU slices: `slices=`.

GPU targets are `stream_executor.GpuTargetConfigProto` text files shipped next to this module (`targets/*.txtpb`);
TPU targets are topologies known to libtpu. Both need the `aot` extra (jax[tpu], jax-cuda12-plugin), which must
live in an environment of its own (docs/aot.md); without it `make_devices` raises one AotError
naming the extra.

The per-chip peak numbers (dense bf16 FLOP/s, memory bandwidth, interconnect bandwidth per direction) are the
vendors' published figures: NVIDIA's H100/H200/A100/L40S datasheets and the Ada whitepaper (RTX 4090, L40S: bf16
with fp32 accumulation, PCIe 4.0 x16 between cards), Google's Cloud TPU system architecture pages (v5e, v5p, v6e,
Ironwood).
They only feed the roofline lower bound, never a pass/fail decision.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

from jax.experimental import topologies

from wan22_jax.errors import ConfigError

TARGET_DIR = Path(__file__).parent / "targets"
EXTRA_HINT = ("install the `aot` extra in an environment of its own (pip install 'wan22-jax[aot]'; it must not "
              "share an environment with a CUDA-less jax: see docs/aot.md) and run with JAX_PLATFORMS=cpu")
GiB = 2**30


class AotError(RuntimeError):
    """A target cannot be made or compiled for (missing extra, unknown target): one line, shown to the user."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator kind.

    memory: bytes one device (a JAX device: a GPU, a TPU TensorCore group) can hold.
    flops: dense bf16 FLOP/s per device; hbm: memory bytes/s per device; link: interconnect bytes/s per device
    and direction (NVLink / ICI / PCIe).
    """

    name: str
    platform: str  # "cuda" | "tpu"
    memory: int
    flops: float
    hbm: float
    link: float
    spec: str = ""  # GPU: the txtpb file name; TPU: libtpu's topology prefix
    devices_per_chip: int = 1
    chip_config: str = "default"


CHIPS: dict[str, Chip] = {
    # GPUs: memory is what the card reports as usable (the txtpb's device_memory_size)
    "h100": Chip("h100", "cuda", 84942979072, 989e12, 3.35e12, 450e9, "h100.txtpb"),  # NVLink4 900 GB/s bidir.
    "h200": Chip("h200", "cuda", 150754820096, 989e12, 4.8e12, 450e9, "h200.txtpb"),
    "a100-80g": Chip("a100-80g", "cuda", 85196873728, 312e12, 2.039e12, 300e9, "a100-80g.txtpb"),  # NVLink3
    "rtx4090": Chip("rtx4090", "cuda", 25393692672, 165.2e12, 1.008e12, 32e9, "rtx4090.txtpb"),  # PCIe 4 x16
    # 48 GB class (L40S; an RTX 6000 Ada has the same memory): bf16 dense with fp32 accumulation, PCIe 4 x16
    "l40s": Chip("l40s", "cuda", 48305799168, 362e12, 864e9, 32e9, "l40s.txtpb"),
    # TPUs: HBM per chip as libtpu plans it (v5e 15.75 GiB of 16 GB, v6e 31.25 GiB of 32 GB); ICI per chip and
    # direction
    "v5e": Chip("v5e", "tpu", int(15.75 * GiB), 197e12, 819e9, 100e9, "v5e"),
    "v5p": Chip("v5p", "tpu", 95 * GiB, 459e12, 2765e9, 300e9, "v5", chip_config="megacore"),
    "v6e": Chip("v6e", "tpu", int(31.25 * GiB), 918e12, 1640e9, 224e9, "v6e"),
    # Ironwood: 192 GiB, 4.6 PFLOP/s fp8 (2.3 bf16) and 7.4 TB/s per chip, shown to JAX as 2 devices per chip
    "tpu7x": Chip("tpu7x", "tpu", 96 * GiB, 1153e12, 3685e9, 300e9, "tpu7x", devices_per_chip=2),
}

# chips -> libtpu topology (2-D tori for v5e/v6e, 3-D for v5p/tpu7x)
TOPOLOGIES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TOPOLOGIES_3D = {1: "1x1x1", 2: "1x1x2", 4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
                 128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed target: `count` devices of `chip` in `slices` slices (GPU: one slice)."""

    name: str
    chip: Chip
    count: int
    slices: int = 1

    @property
    def platform(self) -> str:
        return self.chip.platform

    @property
    def memory(self) -> int:
        return self.chip.memory


def parse_target(name: str, slices: int = 1) -> Target:
    """`h100x8`, `rtx4090`, `v6e-8`, `v5p-8`, `tpu7x-8` -> Target; ConfigError naming the allowed forms."""
    forms = (f"GPUs {', '.join(c for c, v in CHIPS.items() if v.platform == 'cuda')} with optional xN "
             f"(h100x8); TPUs {', '.join(c + '-N' for c, v in CHIPS.items() if v.platform == 'tpu')}")
    gpus = "|".join(re.escape(c) for c, v in CHIPS.items() if v.platform == "cuda")
    m = re.fullmatch(rf"({gpus})(?:x(\d+))?", name)
    if m:
        if slices != 1:
            raise ConfigError(f"--slices {slices}: several slices are a TPU notion; GPU targets take xN")
        count = int(m.group(2) or 1)
        if count < 1:
            raise ConfigError(f"target {name!r}: the GPU count must be >= 1")
        return Target(name, CHIPS[m.group(1)], count)
    m = re.fullmatch(r"(v5e|v5p|v6e|tpu7x)-(\d+)", name)
    if not m:
        raise ConfigError(f"unknown target {name!r}; expected {forms}")
    chip = CHIPS[m.group(1)]
    n = int(m.group(2))
    per_chip = 2 if chip.name in ("v5p", "tpu7x") else 1  # v5p-N and tpu7x-N count TensorCores
    if n % per_chip or n // per_chip not in (TOPOLOGIES_3D if chip.spec in ("v5", "tpu7x") else TOPOLOGIES_2D):
        sizes = sorted((TOPOLOGIES_3D if chip.spec in ("v5", "tpu7x") else TOPOLOGIES_2D))
        raise ConfigError(f"target {name!r}: no {chip.name} topology with that size (chips: {sizes}"
                          f"{', N counts 2 TensorCores per chip' if per_chip == 2 else ''})")
    if slices < 1:
        raise ConfigError(f"--slices must be >= 1, got {slices}")
    return Target(name, chip, n // per_chip * chip.devices_per_chip * slices, slices)


# the module each platform's compiler comes with (the `aot` extra)
COMPILER_MODULES = {"tpu": "libtpu", "cuda": "jax_plugins.xla_cuda12"}


def _compiler_installed(platform: str) -> bool:
    try:
        return importlib.util.find_spec(COMPILER_MODULES[platform]) is not None
    except ModuleNotFoundError:  # the parent package (jax_plugins) is absent
        return False


def make_devices(target: Target) -> list:
    """The target's devices (no hardware needed), in the order a mesh should use.

    Raises AotError (one line naming the `aot` extra) when libtpu or the CUDA plugin is missing.
    """
    chip = target.chip
    try:
        if chip.platform == "cuda":
            config = (TARGET_DIR / chip.spec).read_text()
            desc = topologies.get_topology_desc(platform="cuda", target_config=config,
                                                topology=f"1x1x{target.count}")
        else:
            chips = target.count // target.slices // chip.devices_per_chip
            table = TOPOLOGIES_3D if chip.spec in ("v5", "tpu7x") else TOPOLOGIES_2D
            bounds = (2, 2, 1) if chips >= 4 else (1, 1, 1) if chips == 1 else (1, 1, 2)
            if chip.spec in ("v5e", "v6e") and chips == 2:
                bounds = (1, 2, 1)
            desc = topologies.get_topology_desc(platform="tpu", topology_name=f"{chip.spec}:{table[chips]}",
                                                chip_config_name=chip.chip_config, chips_per_host_bounds=bounds,
                                                num_slices=target.slices)
    except Exception as e:  # noqa: BLE001 - the backends raise bare RuntimeErrors/XlaRuntimeErrors
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = EXTRA_HINT if not _compiler_installed(chip.platform) else "check the target"
        raise AotError(f"cannot make the {target.name} target ({chip.platform}): {text}; {hint}") from e
    devices = list(desc.devices)
    if len(devices) != target.count:
        raise AotError(f"target {target.name}: expected {target.count} devices, the backend made {len(devices)}")
    return devices


def backend_available(platform: str) -> bool:
    """Whether this environment can compile for `platform` ("tpu": libtpu, "cuda": the CUDA plugin)."""
    try:
        make_devices(parse_target("v5e-1" if platform == "tpu" else "h100"))
    except AotError:
        return False
    return True


__all__ = ["AotError", "Chip", "CHIPS", "Target", "parse_target", "make_devices", "backend_available", "GiB",
           "EXTRA_HINT"]
