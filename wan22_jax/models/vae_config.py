"""Configuration of the Wan2.1 and Wan2.2 video VAEs (official `WanVAE_` arguments) and their latent statistics.

`VAEConfig` checks every field's type and consistency when built (a ConfigError naming the field), so a
checkpoint's config.json cannot build a silently different model. `normalize_latent` / `denormalize_latent` are
the official wrappers' latent scaling, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from wan22_jax.errors import ConfigError

# ----------------------------------------------------------------------------------------------- config
# Per-channel latent statistics of the released VAEs (official Wan2_1_VAE / Wan2_2_VAE wrappers; docs/architecture.md §6).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

VERSIONS = ("2.1", "2.2")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_types(cfg) -> None:
    """Each field of the type its annotation says (a config.json with "dim": 2.5 must not build a model)."""
    def bad(field, what):
        raise ConfigError(f"VAEConfig.{field} must be {what}, got {getattr(cfg, field)!r}")

    if not isinstance(cfg.version, str):
        bad("version", f"one of {VERSIONS}")
    for field in ("dim", "z_dim"):
        if not _is_int(getattr(cfg, field)) or getattr(cfg, field) < 1:
            bad(field, "a positive integer")
    if not _is_int(cfg.num_res_blocks) or cfg.num_res_blocks < 0:
        bad("num_res_blocks", "a non-negative integer")
    if cfg.dec_dim is not None and (not _is_int(cfg.dec_dim) or cfg.dec_dim < 1):
        bad("dec_dim", "a positive integer or null")
    if (not isinstance(cfg.dim_mult, tuple) or not cfg.dim_mult
            or not all(_is_int(m) and m >= 1 for m in cfg.dim_mult)):
        bad("dim_mult", "a non-empty list of positive integers")
    if not isinstance(cfg.temperal_downsample, tuple) or not all(
            isinstance(t, (bool, np.bool_)) for t in cfg.temperal_downsample):
        bad("temperal_downsample", "a list of true/false")
    if not isinstance(cfg.attn_scales, tuple):
        bad("attn_scales", "a list")
    if (isinstance(cfg.dropout, bool) or not isinstance(cfg.dropout, (int, float)) or not math.isfinite(cfg.dropout)
            or not 0 <= cfg.dropout < 1):
        bad("dropout", "a number in [0, 1)")
    for field in ("latents_mean", "latents_std"):
        v = getattr(cfg, field)
        if v is not None and (not isinstance(v, tuple) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            bad(field, "a list of finite numbers or null")
    if cfg.latents_std is not None and any(x <= 0 for x in cfg.latents_std):
        bad("latents_std", "positive numbers")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """The WanVAE_ constructor arguments (the fields of `vae_config.json`) plus the latent statistics.

    version: "2.1" (z16, stride 4x8x8) or "2.2" (z48, 2x2 patchify, residual up/down shortcuts, stride 4x16x16).
    dim: encoder base width; dec_dim: decoder base width; None means the official default: `dim` for 2.1
      (whose WanVAE_ has no such argument), 256 for 2.2 (WanVAE_'s default, never overridden by Wan2_2_VAE).
    latents_mean / latents_std: the normalisation constants; None selects the release's values for `version`
      (a Diffusers config carries its own).
    dropout: accepted for compatibility with the checkpoint configs; inference never drops.
    """

    version: str = "2.1"
    dim: int = 96
    dec_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # sic, the official spelling
    dropout: float = 0.0
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def __post_init__(self):
        _check_types(self)
        if self.version not in VERSIONS:
            raise ConfigError(f"VAE version {self.version!r} is not one of {VERSIONS}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(f"temperal_downsample {self.temperal_downsample} needs len(dim_mult) - 1 = "
                              f"{len(self.dim_mult) - 1} entries")
        if self.attn_scales:
            # No release uses them and 2.2 ignores them; refusing beats silently building a different graph.
            raise ConfigError(f"attn_scales={self.attn_scales} is not supported (every Wan VAE uses [])")
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ConfigError("give both latents_mean and latents_std, or neither")
        for name in ("latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise ConfigError(f"{name} has {len(v)} values, z_dim is {self.z_dim}")

    @property
    def decoder_dim(self) -> int:
        if self.dec_dim is not None:
            return self.dec_dim
        return self.dim if self.version == "2.1" else 256

    @property
    def patch_size(self) -> int:
        return 2 if self.version == "2.2" else 1

    @property
    def spatial_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    def latent_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) used to normalise latents."""
        if self.latents_mean is not None:
            return self.latents_mean, self.latents_std
        if self.z_dim != (16 if self.version == "2.1" else 48):
            raise ConfigError(f"no release latent statistics for a {self.version} VAE with z_dim={self.z_dim}; "
                              "set latents_mean/latents_std")
        return (WAN21_LATENT_MEAN, WAN21_LATENT_STD) if self.version == "2.1" else (WAN22_LATENT_MEAN,
                                                                                       WAN22_LATENT_STD)


def normalize_latent(mu: jax.Array, cfg: VAEConfig) -> jax.Array:
    """Official encode normalisation `(mu - mean) * (1 / std)`, the reciprocal rounded to fp32 first.

    mu: [..., z_dim] channels-last.
    """
    mean, std = (np.asarray(v, np.float32) for v in cfg.latent_stats())
    return (mu - mean) * (np.float32(1.0) / std)


def denormalize_latent(z: jax.Array, cfg: VAEConfig) -> jax.Array:
    """Official decode un-normalisation `z / (1 / std) + mean` (a division by the fp32 reciprocal).

    z: [..., z_dim] channels-last. XLA rewrites a division by a broadcast vector into a multiplication by its
    reciprocal, which is not the same fp32 number; the barrier keeps the true division.
    """
    mean, std = (np.asarray(v, np.float32) for v in cfg.latent_stats())
    inv = lax.optimization_barrier(jnp.broadcast_to(np.float32(1.0) / std, z.shape))
    return z / inv + mean


PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(version="2.1", dim=96, z_dim=16),
    "wan2.2": VAEConfig(version="2.2", dim=160, dec_dim=256, z_dim=48),
    # the widths of the reference cases: every code path, a few kB of weights
    "tiny2.1": VAEConfig(version="2.1", dim=4, z_dim=16),
    "tiny2.2": VAEConfig(version="2.2", dim=4, dec_dim=4, z_dim=48),
}


def preset(name: str) -> VAEConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown VAE preset {name!r} (known: {sorted(PRESETS)})") from None
