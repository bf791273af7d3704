"""Lazy, read-only views of checkpoint files: names, shapes, and arrays loaded one at a time.

A `TensorSource` lets the converter check every key and shape before loading a single byte of weights, and
lets the manifest tests run the same mapping on shapes alone.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

from wan22_jax.errors import CheckpointFormatError

# safetensors dtype tags -> numpy dtypes (bf16 through ml_dtypes, which jax also uses).
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class TensorSource(Mapping[str, tuple[int, ...]]):
    """Maps tensor name -> shape; `load(name)` returns the numpy array."""

    description: str = "tensors"

    def load(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def dtype(self, name: str) -> np.dtype:
        raise NotImplementedError


class DictSource(TensorSource):
    """In-memory arrays (tests, and the torch-pickle reader)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], description: str = "arrays"):
        self._arrays = dict(arrays)
        self.description = description

    def __getitem__(self, name):
        return tuple(self._arrays[name].shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def load(self, name):
        return np.asarray(self._arrays[name])

    def dtype(self, name):
        return self._arrays[name].dtype


class ShapeSource(TensorSource):
    """Shapes only, e.g. a manifest of a full-size checkpoint; loading is impossible by construction."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str] | None = None,
                 description: str = "manifest"):
        self._shapes = {k: tuple(v) for k, v in shapes.items()}
        self._dtypes = dict(dtypes or {})
        self.description = description

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, prefix: str = "") -> "ShapeSource":
        """Reads `{key: [shape, dtype]}`; keeps keys under `prefix` (stripped)."""
        raw = json.loads(Path(path).read_text())
        shapes, dtypes = {}, {}
        for k, (shape, dtype) in raw.items():
            if k.startswith(prefix):
                shapes[k[len(prefix):]] = tuple(shape)
                dtypes[k[len(prefix):]] = dtype
        return cls(shapes, dtypes, description=str(path))

    def __getitem__(self, name):
        return self._shapes[name]

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self):
        return len(self._shapes)

    def load(self, name):
        raise CheckpointFormatError(f"{self.description}: shape-only source, cannot load {name!r}")

    def dtype(self, name):
        return np.dtype(_torch_dtype_name_to_numpy(self._dtypes.get(name, "float32")))


def _torch_dtype_name_to_numpy(name: str):
    name = name.replace("torch.", "")
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Parses and validates a safetensors header: every tensor must lie inside the file, sizes must agree."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointFormatError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise CheckpointFormatError(
                f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointFormatError(f"{path}: corrupt safetensors header ({e})") from e
    data_start = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            shape = tuple(int(s) for s in info["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointFormatError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from e
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != need or begin < 0:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r} declares shape {shape} {info['dtype']} ({need} bytes) "
                f"but offsets {begin}..{end}")
        if data_start + end > size:
            raise CheckpointFormatError(
                f"{path}: truncated file: tensor {name!r} ends at byte {data_start + end}, file has {size}")
    return header, data_start


class SafetensorsSource(TensorSource):
    """One or more .safetensors files (a sharded checkpoint is several), read with memory maps, no torch."""

    def __init__(self, paths: list[str | os.PathLike], description: str | None = None):
        self._where: dict[str, tuple[Path, dict, int]] = {}
        for p in map(Path, paths):
            header, start = _read_safetensors_header(p)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self._where:
                    raise CheckpointFormatError(f"tensor {name!r} appears in both {self._where[name][0]} and {p}")
                self._where[name] = (p, info, start)
        self.description = description or ", ".join(str(p) for p in paths)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, stem: str = "diffusion_pytorch_model") -> "SafetensorsSource":
        """`stem.safetensors`, or the shards listed in `stem.safetensors.index.json`."""
        folder = Path(folder)
        single = folder / f"{stem}.safetensors"
        index = folder / f"{stem}.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).exists()]
            if missing:
                raise CheckpointFormatError(f"{index}: shard file(s) {missing} not found in {folder}")
            src = cls([folder / f for f in files], description=str(folder))
            for name, fname in weight_map.items():
                if name not in src._where or src._where[name][0].name != fname:
                    raise CheckpointFormatError(f"{index}: tensor {name!r} is not in shard {fname}")
            return src
        if single.exists():
            return cls([single], description=str(single))
        raise CheckpointFormatError(f"{folder}: neither {single.name} nor {index.name} found")

    def __getitem__(self, name):
        return tuple(self._where[name][1]["shape"])

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)

    def dtype(self, name):
        return np.dtype(_ST_DTYPES[self._where[name][1]["dtype"]])

    def load(self, name):
        path, info, start = self._where[name]
        begin, end = info["data_offsets"]
        mm = np.memmap(path, dtype=np.uint8, mode="r", offset=start + begin, shape=(end - begin,))
        return np.array(mm.view(self.dtype(name)).reshape(self[name]))
