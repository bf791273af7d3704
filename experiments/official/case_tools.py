"""Helpers for generating reference cases with the official Wan2.2 code (a local copy, never committed).

Two builds of the official modules are used per case:
* fp32: the official source as is (through `load_official.import_official`, flash attention -> fp32 softmax);
* fp64: a rewritten copy of the source in which the explicit float32 casts (`.float()`, `torch.float32`,
  `dtype=torch.float`) become float64, so that re-running the same code with float64 weights and inputs gives
  the float64 result the tolerance rule of shared/reference/README.md is measured against.

Only one build is imported at a time (`official(root, f64=...)` swaps the `wan.*` modules in sys.modules).
"""

from __future__ import annotations

import contextlib
import argparse
import json
import re
import time
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_official import import_official  # noqa: E402

OFFICIAL_COMMIT = "42bf4cfaa384bc21833865abc2f9e6c0e67233dc"
_F64_ROOT = Path("/tmp/wan22_official_f64")
# lines whose float casts must stay as they are in the fp64 build: the relative-position bucket index of T5
# (a float64 log could round a bucket differently; the bucket is an integer, not a precision question).
_KEEP_LINE = re.compile(r"rel_pos")


def _f64_source(root: Path) -> Path:
    """A copy of the official tree with its float32 casts turned into float64 ones (rebuilt every run)."""
    if _F64_ROOT.exists():
        shutil.rmtree(_F64_ROOT)
    shutil.copytree(root / "wan", _F64_ROOT / "wan")
    for path in (_F64_ROOT / "wan").rglob("*.py"):
        lines = path.read_text().splitlines(keepends=True)
        out = []
        for line in lines:
            if not _KEEP_LINE.search(line):
                line = line.replace(".float()", ".double()")
                line = re.sub(r"torch\.float32\b", "torch.float64", line)
                line = re.sub(r"torch\.float(?![0-9A-Za-z_])", "torch.float64", line)
                # UniPC builds `b` from 0-d tensors (float32 sigmas) but `rks` from a list holding a Python float
                # (default dtype, float64 here): linalg.solve needs one dtype, so `b` follows in float64
                line = line.replace("b = torch.tensor(b, device=device)",
                                    "b = torch.tensor(b, device=device, dtype=torch.float64)")
            out.append(line)
        path.write_text("".join(out))
    return _F64_ROOT


def any_dtype_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                        causal=False, window_size=(-1, -1), deterministic=False, dtype=None, version=None):
    """Softmax attention in the inputs' own precision (at least fp32): the fp64 build's flash_attention."""
    import torch.nn.functional as F

    out_dtype = q.dtype
    work = torch.promote_types(q.dtype, torch.float32)
    q, k, v = (x.to(work).transpose(1, 2) for x in (q, k, v))
    mask = None
    if k_lens is not None:
        mask = (torch.arange(k.shape[2])[None, :] < k_lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale)
    return out.transpose(1, 2).to(out_dtype)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def _torchvision_stub():
    """The image pipelines import torchvision only for `to_tensor`; the stub has the same semantics and returns
    the default dtype (float32, or float64 during the fp64 re-run). It is in sys.modules only while those
    pipelines are imported: diffusers probes for torchvision with find_spec, which a stub would confuse."""
    try:
        import torchvision  # noqa: F401
        yield
        return
    except ModuleNotFoundError:
        pass

    def to_tensor(pic):
        arr = np.asarray(pic, dtype=np.uint8)  # [H, W, 3]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.get_default_dtype()).div(255.0)

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.to_tensor = to_tensor
    tv.transforms, tr.functional = tr, fn
    stub = {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}
    # wan/utils/utils.py imports imageio for saving videos only (not installed here, never called)
    stub.update({} if _has("imageio") else {"imageio": types.ModuleType("imageio")})
    sys.modules.update(stub)
    try:
        yield
    finally:
        for name in stub:
            sys.modules.pop(name, None)


class Official(types.SimpleNamespace):
    """The official modules of one build: model, t5, vae21, vae22, unipc, dpm, t2v, i2v, ti2v, utils."""


def official(root: str | Path, *, f64: bool = False) -> Official:
    """Imports (fresh) the fp32 or the fp64 build of the official modules."""
    for name in [n for n in sys.modules if n == "wan" or n.startswith("wan.")]:
        del sys.modules[name]
    root = Path(root)
    src = _f64_source(root) if f64 else root
    ns = Official(f64=f64)
    ns.model = import_official(src, "model")
    if f64:
        ns.model.flash_attention = any_dtype_attention
    ns.t5 = import_official(src, "t5")
    ns.vae21 = import_official(src, "vae2_1")
    ns.vae22 = import_official(src, "vae2_2")
    ns.unipc = import_official(src, "wan.utils.fm_solvers_unipc")
    ns.dpm = import_official(src, "wan.utils.fm_solvers")
    with _torchvision_stub():
        ns.utils = import_official(src, "wan.utils.utils")
        ns.t2v = import_official(src, "wan.text2video")
        ns.i2v = import_official(src, "wan.image2video")
        ns.ti2v = import_official(src, "wan.textimage2video")
    return ns


@contextlib.contextmanager
def precision(f64: bool):
    """Default dtype float64 during the fp64 re-run (tensors the pipelines create themselves: masks, zeros)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if f64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# --- random weights -------------------------------------------------------------------------------------------


def randomize(module: torch.nn.Module, seed: int, *, final_scale: dict[str, float] | None = None):
    """Re-initialises every parameter as shared/reference/README.md says: matrices and convs N(0, 1/fan_in),
    norm weights / RMS gammas 1 + 0.1 N, biases 0.1 N, modulation tables 0.1 N; `final_scale` multiplies the
    parameters whose names start with one of its keys."""
    g = torch.Generator().manual_seed(seed)
    final_scale = final_scale or {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            n = torch.randn(p.shape, generator=g, dtype=torch.float64)
            leaf = name.rsplit(".", 1)[-1]
            if "modulation" in leaf or leaf.endswith("bias"):
                val = 0.1 * n
            elif leaf == "gamma" or p.ndim == 1:
                val = 1.0 + 0.1 * n
            else:
                fan_in = int(np.prod(p.shape[1:]))
                val = n / np.sqrt(fan_in)
            for prefix, s in final_scale.items():
                if name.startswith(prefix):
                    val = val * s
            p.copy_(val.to(p.dtype))
    return module


# --- case folders ---------------------------------------------------------------------------------------------


def np32(x) -> np.ndarray:
    """A torch tensor / array as a contiguous numpy array, floats as float32."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    x = np.ascontiguousarray(x)
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


def drift(out32: np.ndarray, out64: np.ndarray) -> float:
    """max|fp32 - fp64| / max|fp64| in float64."""
    a = np.asarray(out32, np.float64)
    b = np.asarray(out64, np.float64)
    den = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / den) if den > 0 else float(np.max(np.abs(a - b)))


def write_case(out_dir: Path, name: str, *, component: str, description: str, call: dict, inputs: dict,
               input_docs: dict, outputs32: dict, outputs64: dict, output_docs: dict, pipeline: bool,
               integer_outputs: tuple[str, ...] = (), extra: dict | None = None) -> dict:
    """Writes case.json + inputs/outputs.safetensors (the checkpoint/ folder is written by the caller).

    Returns the case.json dict. The tolerance follows the shipped rule: max(20 * float64_drift, floor) with
    floor 1e-5 (modules) or 1e-4 (pipelines)."""
    from safetensors.numpy import save_file

    case = out_dir / name
    case.mkdir(parents=True, exist_ok=True)
    save_file({k: np32(v) for k, v in inputs.items()}, str(case / "inputs.safetensors"))
    outs = {k: np32(v) for k, v in outputs32.items()}
    save_file(outs, str(case / "outputs.safetensors"))
    per = {k: (0.0 if k in integer_outputs else drift(outs[k], np32(outputs64[k]))) for k in outs}
    for k in integer_outputs:
        if not np.array_equal(np.asarray(outs[k]), np.asarray(np32(outputs64[k]))):
            raise AssertionError(f"{name}: integer output {k} differs between the fp32 and fp64 runs")
    d = max(per.values())
    floor = 1e-4 if pipeline else 1e-5
    meta = {
        "component": component,
        "description": description,
        "call": call,
        "inputs": {k: f"{list(np32(inputs[k]).shape)} {np32(inputs[k]).dtype} {input_docs[k]}" for k in inputs},
        "outputs": {k: f"{list(outs[k].shape)} {output_docs[k]}" for k in outs},
        "tolerance": {"max_abs_over_max_ref": max(20 * d, floor)},
        "float64_drift": d,
        "float64_drift_per_output": per,
        "tolerance_rule": f"max(20*float64_drift, {floor:g}); metric per output tensor: max|ours-ref| / max|ref|",
        "integer_outputs_exact": list(integer_outputs),
        "dtype": "float32 (CPU) reference",
        "generated_by": f"experiments/official/make_cases.py, official Wan2.2 commit {OFFICIAL_COMMIT}",
    }
    if extra:
        meta.update(extra)
    (case / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def run_makers(doc: str, cases: dict, argv=None, *, script: str | None = None) -> None:
    """The command line every case maker shares: `--official DIR --out DIR [--only NAME ...]`.

    `cases` maps a case name to `make(out_dir, name, official_root)`; each named case is regenerated from
    scratch. `script` (e.g. "make_cases_s2v.py") is recorded as the maker in case.json when it is not the
    default `make_cases.py`.
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="local copy of the official Wan2.2 code (holds wan/)")
    ap.add_argument("--out", required=True, help="folder to write the case folders into")
    ap.add_argument("--only", nargs="*", default=None, help="case names to (re)generate (default: all)")
    args = ap.parse_args(argv)
    names = args.only or list(cases)
    unknown = sorted(set(names) - set(cases))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {sorted(cases)}")
    out = Path(args.out)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in names:
        t0 = time.time()
        shutil.rmtree(out / name, ignore_errors=True)
        cases[name](out, name, args.official)
        meta_path = out / name / "case.json"
        meta = json.loads(meta_path.read_text())
        if script is not None and "make_cases.py" in meta.get("generated_by", ""):
            meta["generated_by"] = meta["generated_by"].replace("make_cases.py", script)
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{name:32s} drift {meta['float64_drift']:.3e} tol "
              f"{meta['tolerance']['max_abs_over_max_ref']:.3e} ({time.time() - t0:.1f}s)", flush=True)
