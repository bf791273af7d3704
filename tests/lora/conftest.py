"""A tiny official-layout DiT and LoRA files written the way each tool writes them (torch layouts, their names).

The expected result of a LoRA is computed here on the official state dict, in torch layout
(W + strength * alpha / rank * up @ down, or W + strength * diff) and converted afterwards: it shares nothing
with wan22_jax.lora but the converter, which the converter's own tests check.
"""

import numpy as np
import pytest
from safetensors.numpy import save_file

from dit_reference import official_state_dict
from wan22_jax.convert.dit import dit_table
from wan22_jax.convert.mapping import convert
from wan22_jax.io.tensor_source import DictSource
from wan22_jax.models.dit import DiTConfig, abstract_dit
from wan22_jax.state import flat_state

CFG = DiTConfig(model_type="t2v", text_len=8, in_dim=4, dim=16, ffn_dim=24, freq_dim=16, text_dim=12, out_dim=4,
                num_heads=2, num_layers=2)


def to_ours(sd: dict, cfg: DiTConfig = CFG) -> dict:
    """An official-layout state dict -> our {dotted path: array} through the converter."""
    return convert(dit_table(cfg), DictSource(sd, "test"), flat_state(abstract_dit(cfg)[1]))


@pytest.fixture(scope="module")
def base_sd():
    return official_state_dict(CFG, np.random.default_rng(0))


def shape_factors(rng, shape, rank):
    """(down [rank, in], up [out, rank]) random LoRA factors for a Linear of weight shape (out, in)."""
    out_dim, in_dim = shape
    down = rng.standard_normal((rank, in_dim)).astype(np.float32) / np.sqrt(in_dim)
    up = 0.3 * rng.standard_normal((out_dim, rank)).astype(np.float32)
    return down, up


def factors(rng, sd, module, rank):
    """(down [rank, in], up [out, rank]) for the Linear `module` of `sd`."""
    return shape_factors(rng, sd[f"{module}.weight"].shape, rank)


def write(path, tensors, metadata=None):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def rel_err(ours: dict, want: dict) -> float:
    assert set(ours) == set(want)
    return max(float(np.max(np.abs(np.asarray(ours[k], np.float64) - want[k]))) / max(float(np.max(np.abs(want[k]))),
                                                                                      1e-30) for k in want)
