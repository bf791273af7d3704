"""The conversion engine: a table of `Rule`s applied to a `TensorSource`, checked against the model's shapes.

A table says, for each of our parameters (a dotted path in the NNX state, e.g. `blocks.self_attn.q.kernel`),
which source tensor(s) feed it and which small transform turns the torch layout into ours. The engine refuses
anything it does not understand: a source tensor no rule uses, a rule whose tensor is missing, a shape that does
not match the model after the transform, or a parameter of ours that no rule fills. Every message names the key.

Transforms use only array methods (`.T`, `.transpose`, `.reshape`) so the same rule runs on numpy arrays (real
conversion) and on jax tracers (`jax.eval_shape` over full-size manifests, which needs no memory).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from wan22_jax.errors import WeightMappingError
from wan22_jax.io.tensor_source import TensorSource

Transform = Callable[[Any], Any]


# ----------------------------------------------------------------------------------------------- transforms
def identity(x):
    return x


def linear(x):
    """torch Linear [out, in] -> our kernel [in, out]."""
    return x.T


def conv3d(x):
    """torch Conv3d [O, I, kt, kh, kw] -> channels-last kernel [kt, kh, kw, I, O]."""
    return x.transpose(2, 3, 4, 1, 0)


def conv2d(x):
    """torch Conv2d [O, I, kh, kw] -> [kh, kw, I, O]."""
    return x.transpose(2, 3, 1, 0)


def conv1x1(x):
    """A 1x1(x1) torch conv [O, I, 1, ...] used as a Linear -> kernel [I, O]."""
    return x.reshape(x.shape[0], x.shape[1]).T


def flatten(x):
    """Broadcast-shaped vectors such as RMS gammas (C,1,1,1) or modulations (1,6,D) -> drop unit axes."""
    return x.reshape(-1)


def squeeze0(x):
    """Drop a leading unit axis: (1, 6, D) -> (6, D)."""
    return x.reshape(x.shape[1:])


# ----------------------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter of ours fed by one source tensor (or one per layer, stacked on axis 0).

    ours: dotted path in our NNX state.
    src: source tensor name; with `stack`, a template containing `{i}` expanded for i in range(stack).
    transform: torch layout -> ours, applied per source tensor before stacking.
    tied: further source names that must hold the same tensor (e.g. a tied embedding saved twice); they are
      consumed, their shapes are checked, their values are not used.
    """

    ours: str
    src: str
    transform: Transform = identity
    stack: int | None = None
    tied: tuple[str, ...] = ()

    def sources(self) -> list[str]:
        if self.stack is None:
            return [self.src]
        if "{i}" not in self.src:
            raise ValueError(f"rule for {self.ours!r}: stacked source {self.src!r} has no {{i}}")
        return [self.src.format(i=i) for i in range(self.stack)]


def stacked(ours: str, src: str, n: int, transform: Transform = identity) -> Rule:
    return Rule(ours, src, transform, stack=n)


# ----------------------------------------------------------------------------------------------- the engine
def _check_coverage(table: Iterable[Rule], source: TensorSource, expected: Mapping[str, Any]) -> None:
    table = list(table)
    used: dict[str, str] = {}
    missing = []
    ours_seen = set()
    for rule in table:
        if rule.ours in ours_seen:
            raise WeightMappingError(f"conversion table maps our parameter {rule.ours!r} twice")
        ours_seen.add(rule.ours)
        for name in rule.sources() + list(rule.tied):
            if name in used:
                raise WeightMappingError(
                    f"source tensor {name!r} is claimed by both {used[name]!r} and {rule.ours!r}")
            used[name] = rule.ours
            if name not in source:
                missing.append(f"{name!r} (for our {rule.ours!r})")
    if missing:
        raise WeightMappingError(
            f"{source.description}: missing {len(missing)} tensor(s): {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else ""))
    unexpected = sorted(set(source) - set(used))
    if unexpected:
        raise WeightMappingError(
            f"{source.description}: {len(unexpected)} unexpected tensor(s) that no rule maps: "
            f"{unexpected[:10]}" + (" ..." if len(unexpected) > 10 else ""))
    unfilled = sorted(set(expected) - ours_seen)
    if unfilled:
        raise WeightMappingError(f"model parameters with no conversion rule: {unfilled[:10]}")
    extra = sorted(ours_seen - set(expected))
    if extra:
        raise WeightMappingError(f"conversion rules for parameters the model does not have: {extra[:10]}")


def _converted_shape(rule: Rule, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = jax.eval_shape(rule.transform, jax.ShapeDtypeStruct(shape, np.float32))
    return tuple(out.shape)


def check(table: Iterable[Rule], source: TensorSource, expected: Mapping[str, Any]) -> None:
    """Validates names and shapes without loading any tensor (works on shape-only manifests)."""
    table = list(table)
    _check_coverage(table, source, expected)
    for rule in table:
        want = tuple(expected[rule.ours].shape)
        names = rule.sources()
        first = tuple(source[names[0]])
        for name in names + list(rule.tied):
            if tuple(source[name]) != first:
                raise WeightMappingError(
                    f"{source.description}: tensor {name!r} has shape {tuple(source[name])}, "
                    f"but {names[0]!r} has {first} (they feed the same parameter {rule.ours!r})")
        got = _converted_shape(rule, names[0], first)
        if rule.stack is not None:
            got = (rule.stack, *got)
        if got != want:
            raise WeightMappingError(
                f"{source.description}: tensor {rule.src!r} has shape {first} -> {got} after "
                f"{getattr(rule.transform, '__name__', 'transform')}"
                f"{' and stacking' if rule.stack else ''}, but the model expects {want} at {rule.ours!r}")


def convert(table: Iterable[Rule], source: TensorSource, expected: Mapping[str, Any],
            dtype: Any | None = None) -> dict[str, np.ndarray]:
    """Checks everything, then loads and transforms each tensor. Returns {our dotted path: numpy array}.

    dtype: cast every parameter to this dtype; None keeps each parameter's expected dtype.
    """
    table = list(table)
    check(table, source, expected)
    out = {}
    for rule in table:
        target = np.dtype(dtype) if dtype is not None else np.dtype(expected[rule.ours].dtype)
        parts = [np.asarray(rule.transform(source.load(n))) for n in rule.sources()]
        arr = np.stack(parts) if rule.stack is not None else parts[0]
        out[rule.ours] = np.ascontiguousarray(arr.astype(target, copy=False))
    return out
