"""Wan VAE checkpoints -> our NNX VAE: official `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` and Diffusers
`AutoencoderKLWan` folders.

Both layouts are described by one structure walk (`_blocks`: every block of the model with its official and
its Diffusers name) and one leaf vocabulary per layout (`_LEAVES`); `official_table` and `diffusers_table` turn
them into `Rule`s for the conversion engine, which checks every name and shape before loading anything.
Our parameter paths are the official names (with `kernel` for `weight`), so the official table is the identity
up to layout transforms.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.convert.ours import find as find_ours, load as load_ours, save as save_ours
from wan22_jax.convert.mapping import Rule, conv1x1, conv2d, conv3d, convert, flatten
from wan22_jax.errors import CheckpointFormatError, ConfigError, WeightMappingError
from wan22_jax.io.tensor_source import SafetensorsSource, TensorSource
from wan22_jax.io.torch_pickle import load_pth
from wan22_jax.models.vae_config import VAEConfig, preset
from wan22_jax.state import fill_state, flat_state
from wan22_jax.models.vae import WanVAE, abstract_vae

OFFICIAL_FILES = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}
OFFICIAL_CONFIG = "vae_config.json"  # beside the .pth in the reference cases; real releases ship none


# ----------------------------------------------------------------------------------------------- structure
class _Block(NamedTuple):
    kind: str  # conv3 | dense | gamma | resblock | attn | resample2d | resample3d
    ours: str  # our path = the official name
    diffusers: str
    shortcut: bool = False  # resblock only: width changes, so a 1x1x1 shortcut conv exists


def _blocks(cfg: VAEConfig) -> list[_Block]:
    """Every parameterised block of the WanVAE_ of `cfg`, in official order, with its Diffusers name."""
    v21 = cfg.version == "2.1"
    nrb, mult = cfg.num_res_blocks, cfg.dim_mult
    last = len(mult) - 1
    out: list[_Block] = []

    def middle(side: str, dim: int):
        out.extend([_Block("resblock", f"{side}.middle.0", f"{side}.mid_block.resnets.0"),
                    _Block("attn", f"{side}.middle.1", f"{side}.mid_block.attentions.0"),
                    _Block("resblock", f"{side}.middle.2", f"{side}.mid_block.resnets.1")])

    def head(side: str):
        out.extend([_Block("gamma", f"{side}.head.0", f"{side}.norm_out"),
                    _Block("conv3", f"{side}.head.2", f"{side}.conv_out")])

    # encoder: 2.1 numbers its blocks flat, 2.2 (and Diffusers 2.2) nest them per stage
    out.append(_Block("conv3", "encoder.conv1", "encoder.conv_in"))
    dims = [cfg.dim * u for u in (1, *mult)]
    k = 0
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        for j in range(nrb):
            ours = f"encoder.downsamples.{k}" if v21 else f"encoder.downsamples.{i}.downsamples.{j}"
            diff = f"encoder.down_blocks.{k}" if v21 else f"encoder.down_blocks.{i}.resnets.{j}"
            out.append(_Block("resblock", ours, diff, shortcut=a != b))
            a, k = b, k + 1
        if i != last:
            kind = "resample3d" if cfg.temperal_downsample[i] else "resample2d"
            ours = f"encoder.downsamples.{k}" if v21 else f"encoder.downsamples.{i}.downsamples.{nrb}"
            diff = f"encoder.down_blocks.{k}" if v21 else f"encoder.down_blocks.{i}.downsampler"
            out.append(_Block(kind, ours, diff))
            k += 1
    middle("encoder", dims[-1])
    head("encoder")
    out.append(_Block("dense", "conv1", "quant_conv"))
    out.append(_Block("dense", "conv2", "post_quant_conv"))

    # decoder: Diffusers nests per stage for both versions
    out.append(_Block("conv3", "decoder.conv1", "decoder.conv_in"))
    dims = [cfg.decoder_dim * u for u in (mult[-1], *mult[::-1])]
    middle("decoder", dims[0])
    up = cfg.temperal_downsample[::-1]
    k = 0
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if v21 and i > 0:
            a //= 2  # the 2.1 upsampling convs halve the width
        for j in range(nrb + 1):
            ours = f"decoder.upsamples.{k}" if v21 else f"decoder.upsamples.{i}.upsamples.{j}"
            out.append(_Block("resblock", ours, f"decoder.up_blocks.{i}.resnets.{j}", shortcut=a != b))
            a, k = b, k + 1
        if i != last:
            kind = "resample3d" if up[i] else "resample2d"
            ours = f"decoder.upsamples.{k}" if v21 else f"decoder.upsamples.{i}.upsamples.{nrb + 1}"
            diff = f"decoder.up_blocks.{i}.upsamplers.0" if v21 else f"decoder.up_blocks.{i}.upsampler"
            out.append(_Block(kind, ours, diff))
            k += 1
    head("decoder")
    return out


# leaf names of a residual block: (norm1, conv1, norm2, conv2, shortcut) in each layout
_LEAVES = {
    "official": ("residual.0", "residual.2", "residual.3", "residual.6", "shortcut"),
    "diffusers": ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"),
}


def _conv(ours: str, src: str, transform) -> list[Rule]:
    return [Rule(f"{ours}.kernel", f"{src}.weight", transform), Rule(f"{ours}.bias", f"{src}.bias")]


def _table(cfg: VAEConfig, layout: str) -> list[Rule]:
    leaf = _LEAVES[layout]
    ours_leaf = _LEAVES["official"]
    rules: list[Rule] = []
    for blk in _blocks(cfg):
        src = blk.ours if layout == "official" else blk.diffusers
        if blk.kind == "conv3":
            rules += _conv(blk.ours, src, conv3d)
        elif blk.kind == "dense":
            rules += _conv(blk.ours, src, conv1x1)
        elif blk.kind == "gamma":
            rules.append(Rule(f"{blk.ours}.gamma", f"{src}.gamma", flatten))
        elif blk.kind == "resblock":
            rules.append(Rule(f"{blk.ours}.{ours_leaf[0]}.gamma", f"{src}.{leaf[0]}.gamma", flatten))
            rules += _conv(f"{blk.ours}.{ours_leaf[1]}", f"{src}.{leaf[1]}", conv3d)
            rules.append(Rule(f"{blk.ours}.{ours_leaf[2]}.gamma", f"{src}.{leaf[2]}.gamma", flatten))
            rules += _conv(f"{blk.ours}.{ours_leaf[3]}", f"{src}.{leaf[3]}", conv3d)
            if blk.shortcut:
                rules += _conv(f"{blk.ours}.{ours_leaf[4]}", f"{src}.{leaf[4]}", conv1x1)
        elif blk.kind == "attn":
            rules.append(Rule(f"{blk.ours}.norm.gamma", f"{src}.norm.gamma", flatten))
            rules += _conv(f"{blk.ours}.to_qkv", f"{src}.to_qkv", conv1x1)
            rules += _conv(f"{blk.ours}.proj", f"{src}.proj", conv1x1)
        else:  # resample2d / resample3d
            rules += _conv(f"{blk.ours}.resample.1", f"{src}.resample.1", conv2d)
            if blk.kind == "resample3d":
                rules += _conv(f"{blk.ours}.time_conv", f"{src}.time_conv", conv3d)
    return rules


def official_table(cfg: VAEConfig) -> list[Rule]:
    """Rules for the official WanVAE_ state dict (`Wan2.x_VAE.pth`)."""
    return _table(cfg, "official")


def diffusers_table(cfg: VAEConfig) -> list[Rule]:
    """Rules for a Diffusers AutoencoderKLWan state dict."""
    return _table(cfg, "diffusers")


# ----------------------------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffusersVAEConfig:
    """The fields of a Diffusers AutoencoderKLWan `config.json` (diffusers 0.42), parsed strictly."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8
    # written by the diffusers Wan2.2 conversion of mid-2025 (then removed: decode always clamps); no effect
    clip_output: bool | None = None

    def to_vae_config(self, source: str) -> VAEConfig:
        version = "2.2" if self.is_residual else "2.1"
        want = {"2.1": (3, 3, None), "2.2": (12, 12, 2)}[version]
        got = (self.in_channels, self.out_channels, self.patch_size)
        if got != want:
            raise ConfigError(f"{source}: is_residual={self.is_residual} (a Wan{version} VAE) needs "
                              f"(in_channels, out_channels, patch_size) = {want}, got {got}")
        # Diffusers' decoder_base_dim=None means base_dim for both versions
        dec_dim = self.decoder_base_dim if self.decoder_base_dim is not None else self.base_dim
        cfg = VAEConfig(version=version, dim=self.base_dim, dec_dim=dec_dim, z_dim=self.z_dim,
                        dim_mult=self.dim_mult, num_res_blocks=self.num_res_blocks, attn_scales=self.attn_scales,
                        temperal_downsample=self.temperal_downsample, dropout=self.dropout,
                        latents_mean=self.latents_mean, latents_std=self.latents_std)
        if self.scale_factor_spatial not in (None, cfg.spatial_stride) or \
                self.scale_factor_temporal not in (None, cfg.temporal_stride):
            raise ConfigError(f"{source}: scale factors (temporal {self.scale_factor_temporal}, spatial "
                              f"{self.scale_factor_spatial}) disagree with the architecture "
                              f"({cfg.temporal_stride}, {cfg.spatial_stride})")
        return cfg


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def read_official_config(path: str | os.PathLike) -> VAEConfig:
    """A `vae_config.json` (WanVAE_ kwargs + version) -> VAEConfig, unknown fields refused."""
    path = Path(path)
    raw = _read_json(path)
    if "version" not in raw:
        raise ConfigError(f"{path}: missing field 'version' ('2.1' or '2.2')")
    return config_from_dict(VAEConfig, raw, source=str(path))


def read_diffusers_config(path: str | os.PathLike) -> VAEConfig:
    """A Diffusers AutoencoderKLWan `config.json` -> VAEConfig, unknown fields refused."""
    path = Path(path)
    raw = _read_json(path)
    cls = raw.get("_class_name", "AutoencoderKLWan")
    if cls != "AutoencoderKLWan":
        raise ConfigError(f"{path}: _class_name is {cls!r}, expected 'AutoencoderKLWan'")
    return config_from_dict(DiffusersVAEConfig, raw, source=str(path)).to_vae_config(str(path))


def _version_from_keys(source: TensorSource) -> str:
    if "encoder.conv1.weight" not in source:
        raise WeightMappingError(f"{source.description}: no 'encoder.conv1.weight'; not an official Wan VAE")
    in_ch = source["encoder.conv1.weight"][1]
    if in_ch not in (3, 12):
        raise WeightMappingError(f"{source.description}: 'encoder.conv1.weight' has {in_ch} input channels; "
                                 "expected 3 (Wan2.1) or 12 (Wan2.2, 2x2 patchified)")
    return "2.1" if in_ch == 3 else "2.2"


# ----------------------------------------------------------------------------------------------- loading
def _locate(path: Path, version: str | None) -> tuple[str, Path]:
    """-> ("official", .pth file) or ("diffusers", folder)."""
    if path.is_file():
        if path.suffix != ".pth":
            raise CheckpointFormatError(f"{path}: expected an official Wan2.x_VAE.pth file or a folder")
        return "official", path
    if not path.is_dir():
        raise CheckpointFormatError(f"{path}: no such file or folder")
    for folder in (path, path / "vae"):
        cfg = folder / "config.json"
        if cfg.is_file() and '"AutoencoderKLWan"' in cfg.read_text():
            return "diffusers", folder
    found = {v: path / n for v, n in OFFICIAL_FILES.items() if (path / n).is_file()}
    if version is not None and found and version not in found:
        raise ConfigError(f"{path}: holds {', '.join(p.name for p in found.values())}, but version={version!r} "
                          "was requested")
    if version is not None and version in found:
        return "official", found[version]
    if len(found) == 1:
        return "official", next(iter(found.values()))
    if len(found) > 1:
        raise CheckpointFormatError(f"{path}: holds both {OFFICIAL_FILES['2.1']} and {OFFICIAL_FILES['2.2']}; "
                                    "pass version='2.1' or '2.2'")
    raise CheckpointFormatError(f"{path}: found neither {' nor '.join(OFFICIAL_FILES.values())} nor a Diffusers "
                                "AutoencoderKLWan folder (config.json + diffusion_pytorch_model.safetensors)")


def source_and_config(path: str | os.PathLike, *, version: str | None = None
                      ) -> tuple[str, TensorSource, VAEConfig, str]:
    """Opens a VAE checkpoint without converting it: (layout, tensor source, config, where the config came
    from)."""
    layout, where = _locate(Path(path), version)
    if layout == "diffusers":
        cfg = read_diffusers_config(where / "config.json")
        return layout, SafetensorsSource.from_folder(where), cfg, str(where / "config.json")
    source = load_pth(where)
    cfg_path = where.parent / OFFICIAL_CONFIG
    if cfg_path.is_file():
        cfg, origin = read_official_config(cfg_path), str(cfg_path)
    else:
        # real releases ship the .pth alone: the released sizes of the version the weights show
        name = "wan2.1" if _version_from_keys(source) == "2.1" else "wan2.2"
        cfg, origin = preset(name), f"no {OFFICIAL_CONFIG} beside {where.name}, so the released {name} sizes"
    if version is not None and cfg.version != version:
        raise ConfigError(f"{where}: holds a Wan{cfg.version} VAE, but version={version!r} was requested")
    return layout, source, cfg, origin


def table_for(layout: str, cfg: VAEConfig) -> list[Rule]:
    return official_table(cfg) if layout == "official" else diffusers_table(cfg)


def load_vae(path: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any | None = None,
             version: str | None = None) -> WanVAE:
    """Loads a Wan VAE from an official .pth, a release folder holding one, or a Diffusers VAE folder.

    Args:
      path: `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` (with an optional `vae_config.json` beside it; without one the
        released sizes are used), a folder containing one of them, or a Diffusers `AutoencoderKLWan` folder
        (or a pipeline folder with a `vae/` subfolder).
      dtype: compute dtype; param_dtype: storage dtype (default: `dtype`).
      version: "2.1" or "2.2", to choose when a folder holds both official files.
    Returns:
      the NNX model with XLA ops (`wan22_jax.ops.with_kernels` picks others); split it once with `nnx.split`
      and pass (graphdef, state) to `wan22_jax.models.vae.encode/decode`.
    """
    param_dtype = dtype if param_dtype is None else param_dtype
    ours = find_ours(path, KIND)
    if ours is not None:
        return load_ours(ours, KIND, VAEConfig, lambda c: abstract_vae(c, dtype=dtype, param_dtype=param_dtype),
                         param_dtype)[1]
    layout, source, cfg, origin = source_and_config(path, version=version)
    graphdef, abstract = abstract_vae(cfg, dtype=dtype, param_dtype=param_dtype)
    try:
        arrays = convert(table_for(layout, cfg), source, flat_state(abstract), dtype=param_dtype)
    except WeightMappingError as e:
        raise WeightMappingError(f"{e} [model config: {origin}]") from e
    return nnx.merge(graphdef, fill_state(abstract, arrays))


KIND = "vae"


def release_jobs(src: Path) -> list:
    """`wan22 convert` jobs for the VAE of a release folder: ("vae", writer(dst))."""
    found = [f for f in OFFICIAL_FILES.values() if (Path(src) / f).is_file()]
    if len(found) != 1:
        return []

    def write(dst: Path):
        model = load_vae(Path(src) / found[0])
        save_ours(model, KIND, model.config, dst)
    return [("vae", write)]
