"""Parity runner for `sched_unipc` / `sched_dpm++`: our sampler on the case's analytic oracle velocity.

The case replays the official loop `for t in timesteps: x = sched.step(oracle(x, t), t, x)` with
`oracle(x, t) = (x - x0) / (t / T) + 0.1 sin(x)`, t the integer timestep as a number (shared/reference/README.md).
Works for any steps / shift / shape given in the case.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from wan22_jax.samplers import get_sampler, official_schedule, sample

SOLVER_OF_COMPONENT = {"sched_unipc": "unipc", "sched_dpm++": "dpm++"}


def oracle_velocity(x0, num_train_timesteps: int = 1000):
    """The reference cases' analytic velocity `(x - x0) / (t / T) + 0.1 sin(x)` as a loop velocity_fn."""
    x0 = jnp.asarray(x0)

    def velocity_fn(x, t, step_index):
        del step_index
        return (x - x0) / (t / num_train_timesteps) + 0.1 * jnp.sin(x)

    return velocity_fn


def run(case, **options) -> dict[str, np.ndarray]:
    """Runs the case; returns timesteps [N] int64, sigmas [N+1], samples [N+1, *S], velocities [N, *S], final."""
    del options  # no device options: the loop is tiny
    call = case.call
    num_train_timesteps = int(call.get("num_train_timesteps", 1000))
    solver = SOLVER_OF_COMPONENT[case.component]
    schedule = official_schedule(solver, int(call["steps"]), float(call["shift"]),
                                 num_train_timesteps=num_train_timesteps)
    x_T = jnp.asarray(case.inputs["x_T"], jnp.float32)
    final, traj = sample(get_sampler(solver), oracle_velocity(case.inputs["x0"], num_train_timesteps), x_T,
                         schedule, return_trajectory=True)
    return {
        "timesteps": schedule.timesteps.astype(np.int64),
        "sigmas": schedule.sigmas,
        "samples": np.asarray(traj["samples"]),
        "velocities": np.asarray(traj["velocities"]),
        "final": np.asarray(final),
    }
