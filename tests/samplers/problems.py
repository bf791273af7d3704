"""Test problems with known answers, shared by the sampler tests and experiments/samplers/run.py."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


class GaussianFlow:
    """Flow of Gaussian data N(mu, s^2) (per coordinate): a linear ODE with a closed-form solution.

    x_sigma = (1 - sigma) x0 + sigma eps has mean (1 - sigma) mu and variance var(sigma) = (1 - sigma)^2 s^2 + sigma^2,
    and the exact marginal velocity is affine in x, so the probability-flow ODE maps x(sigma_0) to
    mu + sqrt(var(0) / var(sigma_0)) (x(sigma_0) - (1 - sigma_0) mu). It is smooth on [0, 1], so every solver
    should show its textbook order on it.
    """

    def __init__(self, mu, s, num_train_timesteps: int = 1000):
        self.mu, self.s, self.T = jnp.asarray(mu), jnp.asarray(s), num_train_timesteps

    def var(self, sig):
        return (1 - sig) ** 2 * self.s**2 + sig**2

    def velocity(self, x, t, step_index=None):
        """velocity_fn for the loop: t is sigma * T (use the "exact" timestep mode for convergence studies)."""
        sig = t / self.T
        dvar = -2 * (1 - sig) * self.s**2 + 2 * sig
        return -self.mu + dvar / (2 * self.var(sig)) * (x - (1 - sig) * self.mu)

    def solution(self, x_start, sigma_start: float):
        """x(0) of the ODE started at x_start, sigma_start."""
        return self.mu + jnp.sqrt(self.var(0.0) / self.var(sigma_start)) * (x_start - (1 - sigma_start) * self.mu)


def oracle_np(x, t, x0, num_train_timesteps: int = 1000):
    """The reference cases' oracle velocity (x - x0) / (t / T) + 0.1 sin(x), numpy."""
    return (x - x0) / (t / num_train_timesteps) + 0.1 * np.sin(x)
