"""Parity harness: runs a reference case (official PyTorch outputs on a tiny model) through our code.

A case folder holds `case.json`, `inputs.safetensors`, `outputs.safetensors` and `checkpoint/` (format in
`shared/reference/README.md`). Each component has a runner module here exposing `run(case) -> {name: array}`;
the harness compares every reference output with `max|ours - ref| / max|ref|` against the case's tolerance.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from wan22_jax.errors import UnsupportedComponentError
from wan22_jax.io.tensor_source import SafetensorsSource
from wan22_jax.sharding import make_mesh, mesh_context

# component name (case.json "component") -> runner module. Adding a component is one line here.
RUNNERS: dict[str, str] = {
    "wan_dit": "wan22_jax.verify.dit",
    "diffusers_dit": "wan22_jax.verify.dit",
    "t5_encoder": "wan22_jax.verify.t5",
    "diffusers_t5": "wan22_jax.verify.t5",
    "vae21_encode": "wan22_jax.verify.vae",
    "vae21_decode": "wan22_jax.verify.vae",
    "vae22_encode": "wan22_jax.verify.vae",
    "vae22_decode": "wan22_jax.verify.vae",
    "diffusers_vae": "wan22_jax.verify.vae",
    "sched_unipc": "wan22_jax.verify.sched",
    "sched_dpm++": "wan22_jax.verify.sched",
    "pipe_t2v_moe": "wan22_jax.verify.pipe",
    "pipe_i2v_moe": "wan22_jax.verify.pipe",
    "pipe_ti2v_i2v": "wan22_jax.verify.pipe",
    "pipe_ti2v_t2v": "wan22_jax.verify.pipe",
    "s2v_dit": "wan22_jax.verify.s2v",
    "s2v_audio": "wan22_jax.verify.s2v",
    "pipe_s2v": "wan22_jax.verify.s2v_pipe",
    "animate_dit": "wan22_jax.verify.animate",
    "animate_clip": "wan22_jax.verify.animate",
    "pipe_animate": "wan22_jax.verify.animate",
    "pipe_animate_replace": "wan22_jax.verify.animate",
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One reference case, loaded. `inputs`/`outputs` are numpy arrays keyed by tensor name."""

    dir: Path
    meta: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def component(self) -> str:
        return self.meta["component"]

    @property
    def call(self) -> dict[str, Any]:
        return self.meta.get("call", {})

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint"

    @property
    def tolerance(self) -> float:
        return float(self.meta["tolerance"]["max_abs_over_max_ref"])


@dataclasses.dataclass(frozen=True)
class OutputResult:
    name: str
    error: float
    tolerance: float
    exact: bool
    passed: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case: str
    component: str
    outputs: tuple[OutputResult, ...]
    ours: dict[str, np.ndarray]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    src = SafetensorsSource([path])
    return {k: src.load(k) for k in src}


def load_case(case_dir: str | os.PathLike) -> Case:
    case_dir = Path(case_dir)
    meta_path = case_dir / "case.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{case_dir}: not a reference case (no case.json)")
    meta = json.loads(meta_path.read_text())
    return Case(case_dir, meta, _load_tensors(case_dir / "inputs.safetensors"),
                _load_tensors(case_dir / "outputs.safetensors"))


def runner_for(component: str):
    """The runner module of a component, or UnsupportedComponentError saying why not."""
    mod = RUNNERS.get(component)
    if mod is None:
        raise UnsupportedComponentError(f"unknown component {component!r} (known: {sorted(RUNNERS)})")
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name == mod:
            raise UnsupportedComponentError(f"component {component!r} is not implemented yet ({mod})") from e
        raise


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max|ref|, computed in float64."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = np.max(np.abs(ref)) if ref.size else 0.0
    diff = np.max(np.abs(ours - ref)) if ref.size else 0.0
    if not np.isfinite(diff):
        return float("inf")
    return float(diff / denom) if denom > 0 else float(diff)


def compare(case: Case, ours: dict[str, np.ndarray]) -> tuple[OutputResult, ...]:
    exact_names = set(case.meta.get("integer_outputs_exact", []))
    results = []
    for name, ref in case.outputs.items():
        tol = case.tolerance
        if name not in ours:
            results.append(OutputResult(name, float("inf"), tol, name in exact_names, False, "not produced"))
            continue
        out = np.asarray(ours[name])
        if out.shape != ref.shape:
            results.append(OutputResult(name, float("inf"), tol, name in exact_names, False,
                                        f"shape {out.shape} != reference {ref.shape}"))
            continue
        if name in exact_names:
            ok = bool(np.array_equal(out.astype(np.int64), ref.astype(np.int64)))
            results.append(OutputResult(name, 0.0 if ok else float("inf"), 0.0, True, ok))
            continue
        err = relative_error(out, ref)
        results.append(OutputResult(name, err, tol, False, err <= tol))
    return tuple(results)


def run_case(case_dir: str | os.PathLike, mesh=None, **options) -> CaseResult:
    """Loads a case, runs our implementation, compares. Options go to the runner.

    mesh: a Mesh or spec ("fsdp=4,seq=2") set as the context mesh while the runner runs: DiT weights load onto
      their shards and the DiT's activations are split (see wan22_jax.sharding).
    """
    case = load_case(case_dir)
    runner = runner_for(case.component)
    with mesh_context(None if mesh is None else make_mesh(mesh)):
        ours = {k: np.asarray(v) for k, v in runner.run(case, **options).items()}
    return CaseResult(case.name, case.component, compare(case, ours), ours)


def find_cases(root: str | os.PathLike) -> list[Path]:
    """Every folder under `root` (itself included) that holds a case.json, sorted."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob("case.json"))


def default_reference_dir() -> Path:
    """`$WAN22_REFERENCE_DIR`, else `../shared/reference` beside the repository."""
    env = os.environ.get("WAN22_REFERENCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "reference"
