"""Reading an optimized, partitioned HLO module (`compiled.as_text()`): collectives and custom-call kernels.

Shapes in a partitioned module are per device. A collective inside a `while` body runs once per iteration: each
computation's multiplicity is the product of the known trip counts (`known_trip_count` in the loop's backend
config) of the loops that call it, so counts and bytes are per run of the program, not per line of text. The
branches of a conditional share their caller's count equally (an estimate: which one runs depends on the data;
for the A14B expert switch it is each expert's share of the steps only when the boundary halves them).

Bytes are what one device sends (ring algorithms, group of n devices, R the per-device result):
all-gather R (n-1)/n, reduce-scatter R (n-1), all-reduce 2 R (n-1)/n, all-to-all R (n-1)/n, collective-permute R.
"""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}

_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\([^)]*\))?.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([\w\-]+)\(")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_CALLS = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([\d,\s]*)\}")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_CONSTANT = re.compile(r"=\s*[su]\d+\[\]\S*\s+constant\((\d+)\)")


@dataclasses.dataclass
class Collective:
    kind: str
    count: float = 0
    bytes: float = 0.0


def _array_bytes(shape_text: str) -> list[int]:
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in DTYPE_BYTES:
            out.append(DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)))
    return out


def _group_size(line: str, num_devices: int) -> int:
    m = _GROUPS_MESH.search(line)  # mesh['a'=1,'b'=4] {'b'}: groups over the named axes
    if m:
        sizes = dict((k.strip("' "), int(v)) for k, v in re.findall(r"'?([\w]+)'?=(\d+)", m.group(1)))
        return int(np.prod([sizes.get(a.strip("' "), 1) for a in m.group(2).split(",") if a.strip()]))
    m = _GROUPS_IOTA.search(line)
    if m:
        return int(m.group(2))
    m = _GROUPS_LIST.search(line)
    if m:
        return len([x for x in m.group(1).split(",") if x.strip()])
    return num_devices


def _sent(kind: str, result: float, n: int) -> float:
    if n <= 1:
        return 0.0
    if kind == "all-gather" or kind.endswith("all-to-all"):
        return result * (n - 1) / n
    if kind == "reduce-scatter":
        return result * (n - 1)
    if kind == "all-reduce":
        return 2 * result * (n - 1) / n
    return result  # collective-permute


def split_computations(text: str) -> dict[str, list[str]]:
    """{computation name: its instruction lines} of an HLO module's text (the entry as "__entry__" too)."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and "=" not in line.split("{")[0].split("(")[0]:
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    comps["__entry__"] = comps[current]
            continue
        if line.strip() == "}":
            current = None
            continue
        comps[current].append(line)
    return comps


def _trip_count(line: str, condition: list[str]) -> int:
    """A while loop's iterations: its `known_trip_count`, else (TPU modules drop it) the bound of a condition
    `i < N` on a counter from 0 (the form lax.scan lowers to); 1 when neither is found."""
    m = _TRIP.search(line)
    if m:
        return int(m.group(1))
    roots = [c for c in condition if c.lstrip().startswith("ROOT") and "direction=LT" in c]
    bounds = [int(b) for c in condition for b in _CONSTANT.findall(c)]
    return bounds[0] if roots and len(bounds) == 1 else 1


def multiplicities(comps: dict[str, list[str]]) -> dict[str, float]:
    """How many times each computation runs per program run (loop bodies times their known trip counts)."""
    entry = comps.get("__entry__")
    name_of = {id(v): k for k, v in comps.items() if k != "__entry__"}
    counts: dict[str, float] = collections.defaultdict(float)
    if entry is None:
        return counts

    def visit(name: str, times: float, depth: int = 0):
        if depth > 64 or name not in comps:
            return
        counts[name] += times
        for line in comps[name]:
            calls = dict(_CALLS.findall(line))
            trips = _trip_count(line, comps.get(calls.get("condition", ""), [])) if "body" in calls else 1
            for role, callee in calls.items():
                visit(callee, times * (trips if role == "body" else 1), depth + 1)
            b = _BRANCHES.search(line)
            if b:  # one branch runs per visit: each gets its share (the A14B expert switch: half the steps each)
                callees = re.findall(r"%?([\w.\-]+)", b.group(1))
                for callee in callees:
                    visit(callee, times / len(callees), depth + 1)

    visit(name_of[id(entry)], 1)
    return counts


def collectives(text: str, num_devices: int) -> dict[str, Collective]:
    """{kind: Collective(count per run, bytes sent per device per run)} of an optimized HLO module."""
    comps = split_computations(text)
    mult = multiplicities(comps)
    found: dict[str, Collective] = {}
    for name, lines in comps.items():
        if name == "__entry__" or not mult.get(name):
            continue
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            shape, op = m.groups()
            if op.endswith("-done"):
                continue
            kind = op[:-len("-start")] if op.endswith("-start") else op
            if kind not in COLLECTIVES:
                continue
            sizes = _array_bytes(shape)
            result = (sizes[0] if kind == "collective-permute" else max(sizes)) if sizes else 0
            entry = found.setdefault(kind, Collective(kind))
            entry.count += mult[name]
            entry.bytes += mult[name] * _sent(kind, result, _group_size(line, num_devices))
    return found


def custom_calls(text: str) -> dict[str, int]:
    """{custom_call_target: instruction count} (static: each kernel once per place it appears)."""
    return dict(collections.Counter(_TARGET.findall(text)))


def attention_kernel(text: str) -> str:
    """Which attention kernel the program holds: "cudnn" (`__cudnn$fmha*`), "splash" (a Mosaic
    `tpu_custom_call` from the splash kernel), "mosaic" (another Mosaic kernel), or "xla"."""
    targets = custom_calls(text)
    if any(t.startswith("__cudnn$fmha") for t in targets):
        return "cudnn"
    if "tpu_custom_call" in targets:
        lines = [line for line in text.splitlines() if 'custom_call_target="tpu_custom_call"' in line]
        return "splash" if any("splash" in line for line in lines) else "mosaic"
    return "xla"


__all__ = ["COLLECTIVES", "Collective", "split_computations", "multiplicities", "collectives", "custom_calls",
           "attention_kernel"]
