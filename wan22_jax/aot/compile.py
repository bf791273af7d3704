"""Compiling one stage for a target and measuring it: memory plan, fit, collectives, kernel, roofline.

Memory numbers are XLA's per-device plan (`compiled.memory_analysis()`): arguments, outputs, temporaries, and
the peak (arguments + outputs - aliased + temporaries where the backend gives no peak of its own). A TPU program
that does not fit fails to compile (RESOURCE_EXHAUSTED); that failure is a measurement, reported as one line
"needs X, Y available". GPU compiles never fail for memory: the peak is compared with the card.

The roofline is a lower bound on one run's time, the largest of: compute (analytic FLOPs over all devices' peak),
memory (each device reads its weights once per pass plus its arguments and outputs once), interconnect (the
bytes each device sends in the optimized HLO's collectives, at the per-device link rate).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import jax
from jax.sharding import Mesh

from wan22_jax.aot import hlo
from wan22_jax.aot.programs import Stage
from wan22_jax.aot.targets import GiB, Target

_OOM_USED = re.compile(r"Used\s+([\d.]+[KMGT]?i?B?)\s+of\s+([\d.]+[KMGT]?i?B?)", re.I)
_OOM_EXCEEDS = re.compile(
    r"(?:required for ([\w ]+?) )?\(?([\d.]+[KMGT])\)?\s+exceeds available HBM \(([\d.]+[KMGT])\)", re.I)


@dataclasses.dataclass
class StageReport:
    """What `wan22 aot` prints for one stage (per device unless said otherwise)."""

    stage: str
    compile_s: float
    fits: bool
    memory: int  # what one device may hold
    argument: int | None = None
    output: int | None = None
    alias: int | None = None
    temp: int | None = None
    peak: int | None = None
    oom: str | None = None  # the compiler's out-of-memory verdict, one line
    attention: str | None = None
    custom_calls: dict[str, int] = dataclasses.field(default_factory=dict)
    collectives: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    flops: float = 0.0
    runs: int = 1
    roofline_s: dict[str, float] = dataclasses.field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _gib(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def oom_line(message: str, memory: int) -> str:
    """The compiler's out-of-memory error as "needs X, Y available" (the first line when not recognised)."""
    m = _OOM_EXCEEDS.search(message)
    if m:
        what = f" ({m.group(1)})" if m.group(1) else ""
        return f"needs {m.group(2)}{what}, {m.group(3)} available"
    m = _OOM_USED.search(message)
    if m:
        return f"needs {m.group(1)}, {m.group(2)} available"
    first = next((line.strip() for line in message.splitlines() if "memory" in line.lower()), message.strip())
    return f"does not fit ({_gib(memory)} per device): {first[:300]}"


def _is_oom(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "exceeds available" in text


def per_device_bytes(tree) -> int:
    """Bytes one device holds of an abstract pytree whose leaves carry NamedShardings (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.shape
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            shape = sharding.shard_shape(shape)
        n = 1
        for d in shape:
            n *= d
        total += n * leaf.dtype.itemsize
    return total


def compile_stage(stage: Stage, target: Target, mesh: Mesh) -> tuple[StageReport, Any]:
    """Lowers and compiles `stage` for the target's mesh; returns (report, compiled or None on OOM)."""
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = jax.jit(stage.fn, donate_argnums=stage.donate, out_shardings=stage.out_shardings).lower(*stage.args)
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - XlaRuntimeError; only out-of-memory is a measurement
            if not _is_oom(e):
                raise
            return StageReport(stage.name, time.perf_counter() - t0,
                               False, target.memory, oom=oom_line(str(e), target.memory), flops=stage.flops,
                               runs=stage.runs, note=stage.note), None
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    arg, out = m.argument_size_in_bytes, m.output_size_in_bytes
    alias, temp = m.alias_size_in_bytes, m.temp_size_in_bytes
    peak = getattr(m, "peak_memory_in_bytes", 0) or (arg + out - alias + temp)
    text = compiled.as_text()
    n = mesh.size
    colls = hlo.collectives(text, n)
    report = StageReport(
        stage.name, compile_s, peak <= target.memory, target.memory, arg, out, alias, temp, peak,
        attention=hlo.attention_kernel(text), custom_calls=hlo.custom_calls(text),
        collectives={k: {"count": c.count, "bytes": c.bytes} for k, c in sorted(colls.items())},
        flops=stage.flops, runs=stage.runs, note=stage.note)
    report.roofline_s = roofline(stage, target, mesh, report)
    return report, compiled


def roofline(stage: Stage, target: Target, mesh: Mesh, report: StageReport) -> dict[str, float]:
    """Lower bounds on one run's time (seconds): compute, memory traffic, interconnect, and their max."""
    chip = target.chip
    n = mesh.size
    weights = per_device_bytes(stage.args[0])  # every stage's first argument is its parameters
    io = (report.argument or 0) + (report.output or 0)
    memory = (io + weights * max(0, stage.weight_passes - 1)) / chip.hbm
    compute = stage.flops / (n * chip.flops)
    link = sum(c["bytes"] for c in report.collectives.values()) / chip.link
    return {"compute": compute, "memory": memory, "interconnect": link, "bound": max(compute, memory, link)}


def format_report(r: StageReport) -> list[str]:
    """Human-readable lines of one stage."""
    head = f"{r.stage}: compile {r.compile_s:.1f} s"
    if r.oom:
        return [f"{head}; DOES NOT FIT: {r.oom}"]
    lines = [f"{head}; peak {_gib(r.peak)} of {_gib(r.memory)} per device -> {'fits' if r.fits else 'DOES NOT FIT'}"
             + (f" ({r.note})" if r.note else ""),
             f"  arguments {_gib(r.argument)}, outputs {_gib(r.output)}, aliased {_gib(r.alias)}, "
             f"temporaries {_gib(r.temp)}",
             f"  attention kernel: {r.attention}"
             + (f"; custom calls: {', '.join(f'{k} x{v}' for k, v in sorted(r.custom_calls.items()))}"
                if r.custom_calls else "")]
    if r.collectives:
        parts = [f"{k} x{int(c['count'])} ({_gib(c['bytes'])})" for k, c in r.collectives.items()]
        lines.append("  collectives per run (sent per device): " + ", ".join(parts))
    else:
        lines.append("  collectives: none")
    rf = r.roofline_s
    runs = f" x {r.runs} runs" if r.runs > 1 else ""
    lines.append(f"  {r.flops / 1e12:.1f} TFLOP{runs}; roofline >= {rf['bound']:.3g} s per run (compute "
                 f"{rf['compute']:.3g} s, memory {rf['memory']:.3g} s, interconnect {rf['interconnect']:.3g} s)")
    return lines


__all__ = ["StageReport", "compile_stage", "roofline", "format_report", "oom_line", "per_device_bytes"]
