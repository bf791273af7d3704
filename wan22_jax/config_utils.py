"""Strict construction of frozen config dataclasses from JSON-like dicts."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from wan22_jax.errors import ConfigError

T = TypeVar("T")


def config_from_dict(cls: type[T], raw: Mapping[str, Any], *, source: str, ignore: tuple[str, ...] = ()) -> T:
    """Builds `cls` from `raw`, refusing any field it does not know.

    Keys starting with `_` are metadata (diffusers writes `_class_name`, `_diffusers_version`) and are skipped,
    as are the names in `ignore`. Lists become tuples so that configs stay hashable (they are static jit args).
    """
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    unknown = []
    for key, value in raw.items():
        if key.startswith("_") or key in ignore:
            continue
        if key not in known:
            unknown.append(key)
            continue
        kwargs[key] = _freeze(value)
    if unknown:
        raise ConfigError(
            f"{source}: unknown config field(s) {sorted(unknown)} for {cls.__name__}; "
            f"known fields are {sorted(known)}"
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: invalid {cls.__name__}: {e}") from e


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON view of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
