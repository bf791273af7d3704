"""The contract every sampler meets, so that one `lax.scan` loop (loop.py) drives them all.

A sampler is a frozen keyword-only dataclass of hyper-parameters with three pure methods:

* `tables(schedule) -> {name: [N, ...] float64 numpy}`: every data-independent per-step number (sigmas, model
  timesteps, solver coefficients), computed once on the host in float64. The loop casts them to the compute dtype
  and scans over their leading axis, so a step never branches on the step index in Python.
* `init(x) -> state`: the explicit state pytree (a NamedTuple with at least the current sample `x`).
* `step(state, row, velocity, key) -> (state, v)`: one step. `row` holds this step's slice of the tables,
  `velocity(x, t)` evaluates the (guided) model at sample x and model timestep t, `key` is this step's PRNG key
  (None for deterministic samplers). Returns the new state and the velocity at the step's first evaluation.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.samplers.schedule import Schedule

Array = jax.Array
# velocity(x [*S], t []) -> v [*S]: the model with guidance and step index already bound by the loop.
StepVelocity = Callable[[Array, Array], Array]


class Sampler(Protocol):
    """Structural type of a sampler; see the module docstring."""

    @property
    def stochastic(self) -> bool:
        """Whether `step` draws noise (then the loop requires a key)."""

    def nfe(self, steps: int) -> int:
        """Model evaluations of a whole run of `steps` steps."""

    def tables(self, schedule: Schedule) -> dict[str, np.ndarray]:
        ...

    def init(self, x: Array) -> Any:
        ...

    def step(self, state: Any, row: Mapping[str, Array], velocity: StepVelocity,
             key: Array | None) -> tuple[Any, Array]:
        ...


def compute_dtype(x: Array) -> jnp.dtype:
    """The dtype of updates and coefficients: at least float32 (a bf16 sample is updated in float32, as the
    official DPM++ step does), float64 when the sample is float64 (x64 convergence studies)."""
    return jnp.result_type(x.dtype, jnp.float32)


def combine(coefs: list[Array], terms: list[Array]) -> Array:
    """sum_k coefs[k] * terms[k] for scalar coefs; terms may be of lower precision than the coefficients."""
    out = coefs[0] * terms[0]
    for c, t in zip(coefs[1:], terms[1:]):
        out = out + c * t
    return out


def data_prediction(x: Array, sigma: Array, v: Array) -> Array:
    """x0 estimate from a flow prediction: x - sigma * v (official `convert_model_output`)."""
    return x - sigma * v
