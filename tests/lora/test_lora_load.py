"""Each format read onto our parameter paths: the merged weights equal the update done in torch layout on the
official state dict and converted; every bad file is one error naming the key before any weight changes."""

import json

import ml_dtypes
import numpy as np
import pytest

from wan22_jax.errors import CheckpointFormatError, InputFileError, UnusualInputWarning, WeightMappingError
from wan22_jax.lora.apply import apply_flat
from wan22_jax.lora.formats import COMFYUI, DIFFUSERS, MUSUBI
from wan22_jax.lora.load import read_lora

from .conftest import CFG, factors, rel_err, to_ours, write

TOL = 1e-6  # float32 sums in another order

# official module -> its diffusers name (written out here, independently of the converter's table)
DIFFUSERS_NAMES = {"self_attn.q": "attn1.to_q", "self_attn.o": "attn1.to_out.0", "cross_attn.k": "attn2.to_k",
                   "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
TOP_DIFFUSERS = {"head.head": "proj_out", "time_projection.1": "condition_embedder.time_proj",
                 "text_embedding.0": "condition_embedder.text_embedder.linear_1"}


def _merged(path, base_sd, strength=1.0, **kw):
    weights = read_lora(path, CFG, **kw)
    return apply_flat(to_ours(base_sd), [(weights.deltas, strength)]), weights


def _low_rank(rng, sd, want, modules, rank, alpha, strength):
    """{module: (down, up)} and the update applied to `want` (torch layout)."""
    out = {}
    for m in modules:
        down, up = factors(rng, sd, m, rank)
        out[m] = (down, up)
        scale = 1.0 if alpha is None else alpha / rank
        want[f"{m}.weight"] = want[f"{m}.weight"] + strength * scale * (up @ down)
    return out


MODULES = ["blocks.0.self_attn.q", "blocks.1.self_attn.o", "blocks.1.cross_attn.k", "blocks.0.ffn.0",
           "blocks.1.ffn.2", "head.head", "time_projection.1", "text_embedding.0"]


@pytest.mark.parametrize("names", [("lora_A", "lora_B"), ("lora_down", "lora_up")])
@pytest.mark.parametrize("prefix", ["diffusion_model.", ""])
def test_comfyui_low_rank_with_alpha(tmp_path, base_sd, names, prefix):
    rng = np.random.default_rng(1)
    want = dict(base_sd)
    pairs = _low_rank(rng, base_sd, want, MODULES, rank=3, alpha=6.0, strength=0.7)
    tensors = {}
    for m, (down, up) in pairs.items():
        tensors[f"{prefix}{m}.{names[0]}.weight"] = down
        tensors[f"{prefix}{m}.{names[1]}.weight"] = up
        tensors[f"{prefix}{m}.alpha"] = np.float32(6.0)
    merged, weights = _merged(write(tmp_path / "c.safetensors", tensors), base_sd, 0.7)
    assert weights.format == COMFYUI and weights.keys == len(tensors)
    assert rel_err(merged, to_ours(want)) <= TOL


def test_lightx2v_full_differences(tmp_path, base_sd):
    """LightX2V's layout: low-rank factors without alpha plus .diff (Linears, norms, the patch conv),
    .diff_b (biases) and diff_m (block modulation)."""
    rng = np.random.default_rng(2)
    want = dict(base_sd)
    pairs = _low_rank(rng, base_sd, want, ["blocks.0.self_attn.q", "blocks.1.ffn.0"], rank=4, alpha=None,
                      strength=1.0)
    tensors = {}
    for m, (down, up) in pairs.items():
        tensors[f"diffusion_model.{m}.lora_down.weight"] = down
        tensors[f"diffusion_model.{m}.lora_up.weight"] = up
    diffs = {"blocks.0.self_attn.q.diff_b": "blocks.0.self_attn.q.bias",
             "blocks.1.cross_attn.norm_k.diff": "blocks.1.cross_attn.norm_k.weight",
             "blocks.0.norm3.diff": "blocks.0.norm3.weight", "blocks.0.norm3.diff_b": "blocks.0.norm3.bias",
             "blocks.1.diff_m": "blocks.1.modulation", "blocks.1.ffn.2.diff": "blocks.1.ffn.2.weight",
             "head.head.diff": "head.head.weight", "head.head.diff_b": "head.head.bias",
             "head.modulation.diff": "head.modulation", "patch_embedding.diff": "patch_embedding.weight"}
    for key, param in diffs.items():
        d = 0.1 * rng.standard_normal(base_sd[param].shape).astype(np.float32)
        tensors[f"diffusion_model.{key}"] = d
        want[param] = want[param] + d
    merged, weights = _merged(write(tmp_path / "l.safetensors", tensors), base_sd)
    assert weights.format == COMFYUI
    assert rel_err(merged, to_ours(want)) <= TOL


def test_convolution_lora_on_the_patch_embedding(tmp_path, base_sd):
    """A LoRA of the patch Conv3d: down [r, I, kt, kh, kw], up [O, r, 1, 1, 1]."""
    rng = np.random.default_rng(7)
    w = base_sd["patch_embedding.weight"]
    down = rng.standard_normal((3, *w.shape[1:])).astype(np.float32)
    up = 0.1 * rng.standard_normal((w.shape[0], 3, 1, 1, 1)).astype(np.float32)
    want = dict(base_sd)
    want["patch_embedding.weight"] = w + 0.5 * (up.reshape(-1, 3) @ down.reshape(3, -1)).reshape(w.shape)
    tensors = {"diffusion_model.patch_embedding.lora_down.weight": down,
               "diffusion_model.patch_embedding.lora_up.weight": up,
               "diffusion_model.patch_embedding.alpha": np.float32(1.5)}
    merged, _ = _merged(write(tmp_path / "p.safetensors", tensors), base_sd)
    assert rel_err(merged, to_ours(want)) <= TOL


def test_musubi(tmp_path, base_sd):
    rng = np.random.default_rng(3)
    want = dict(base_sd)
    pairs = _low_rank(rng, base_sd, want, MODULES, rank=2, alpha=1.0, strength=1.5)
    tensors = {}
    for m, (down, up) in pairs.items():
        k = "lora_unet_" + m.replace(".", "_")
        tensors.update({f"{k}.lora_down.weight": down, f"{k}.lora_up.weight": up, f"{k}.alpha": np.float32(1.0)})
    merged, weights = _merged(write(tmp_path / "m.safetensors", tensors), base_sd, 1.5)
    assert weights.format == MUSUBI
    assert rel_err(merged, to_ours(want)) <= TOL


@pytest.mark.parametrize("alpha", [None, 8.0])
def test_diffusers_peft(tmp_path, base_sd, alpha):
    """PEFT names, `lora_B.bias` (scaled with the update), alpha from diffusers' adapter metadata."""
    rng = np.random.default_rng(4)
    want = dict(base_sd)
    rank = 4
    pairs = _low_rank(rng, base_sd, want, MODULES, rank=rank, alpha=alpha, strength=1.0)
    tensors = {}
    for m, (down, up) in pairs.items():
        if m.startswith("blocks."):
            _, i, rest = m.split(".", 2)
            name = f"blocks.{i}.{DIFFUSERS_NAMES[rest]}"
        else:
            name = TOP_DIFFUSERS[m]
        tensors[f"transformer.{name}.lora_A.weight"] = down
        tensors[f"transformer.{name}.lora_B.weight"] = up
    bias = 0.1 * rng.standard_normal(base_sd["blocks.0.self_attn.q.bias"].shape).astype(np.float32)
    tensors["transformer.blocks.0.attn1.to_q.lora_B.bias"] = bias
    want["blocks.0.self_attn.q.bias"] = want["blocks.0.self_attn.q.bias"] + (1.0 if alpha is None else alpha / rank) * bias
    meta = None if alpha is None else {"lora_adapter_metadata": json.dumps({"r": rank, "lora_alpha": alpha})}
    merged, weights = _merged(write(tmp_path / "d.safetensors", tensors, meta), base_sd)
    assert weights.format == DIFFUSERS
    assert rel_err(merged, to_ours(want)) <= TOL


def test_mixed_ranks_on_one_stacked_kernel(tmp_path, base_sd):
    """Layers of one scanned kernel with different ranks (and one layer untouched) stack into one update."""
    rng = np.random.default_rng(5)
    want = dict(base_sd)
    tensors = {}
    for m, rank in (("blocks.0.self_attn.q", 1), ("blocks.1.self_attn.q", 5)):
        (down, up), = _low_rank(rng, base_sd, want, [m], rank=rank, alpha=2.0, strength=1.0).values()
        tensors.update({f"diffusion_model.{m}.lora_A.weight": down, f"diffusion_model.{m}.lora_B.weight": up,
                        f"diffusion_model.{m}.alpha": np.float32(2.0)})
    merged, weights = _merged(write(tmp_path / "r.safetensors", tensors), base_sd)
    assert weights.deltas["blocks.self_attn.q.kernel"]["a"].shape == (2, 16, 5)
    assert rel_err(merged, to_ours(want)) <= TOL


# ---- bad files: one error naming the culprit
def _pair(prefix="diffusion_model.blocks.0.self_attn.q", rank=2, d_in=16, d_out=16):
    rng = np.random.default_rng(0)
    return {f"{prefix}.lora_A.weight": rng.standard_normal((rank, d_in)).astype(np.float32),
            f"{prefix}.lora_B.weight": rng.standard_normal((d_out, rank)).astype(np.float32)}


BAD = [
    ("unknown_key", {**_pair(), "diffusion_model.blocks.0.self_attn.q_img.lora_A.weight": np.zeros((2, 16))},
     WeightMappingError, r"1 comfyui LoRA key\(s\) match no parameter of this DiT: "
                         r"\['diffusion_model\.blocks\.0\.self_attn\.q_img\.lora_A\.weight'\]"),
    ("layer_out_of_range", _pair("diffusion_model.blocks.7.self_attn.q"), WeightMappingError,
     r"blocks\.7\.self_attn\.q\.lora_A\.weight"),
    ("shape_mismatch", _pair(d_in=32), WeightMappingError,
     r"'diffusion_model\.blocks\.0\.self_attn\.q\.lora_A\.weight' \(2, 32\) .* do not make a \[16, 16\] update"),
    ("down_without_up", {k: v for k, v in _pair().items() if "lora_A" in k}, WeightMappingError,
     r"lora_A\.weight' has no matching lora_up/lora_B"),
    ("diff_shape", {"diffusion_model.blocks.0.norm3.diff": np.zeros(8, np.float32)}, WeightMappingError,
     r"norm3\.diff' has shape \(8,\), but 'blocks\.0\.norm3\.weight' of this model has \(16,\)"),
    ("low_rank_on_a_norm", {"diffusion_model.blocks.0.norm3.lora_A.weight": np.zeros((2, 16), np.float32),
                            "diffusion_model.blocks.0.norm3.lora_B.weight": np.zeros((16, 2), np.float32)},
     WeightMappingError, r"are a low-rank update of 'blocks\.0\.norm3\.weight', which is neither a Linear nor a "
                         r"convolution"),
    ("not_wan", {"unet.down.0.lora_A.weight": np.zeros((2, 4), np.float32)}, WeightMappingError,
     r"not a Wan LoRA in a known format"),
]


@pytest.mark.parametrize("tensors,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_lora_is_one_clear_error(tmp_path, tensors, exc, match):
    with pytest.raises(exc, match=match):
        read_lora(write(tmp_path / "bad.safetensors", tensors), CFG)


def test_unknown_keys_warn_when_not_strict(tmp_path, base_sd):
    tensors = {**_pair(), "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight": np.zeros((2, 16), np.float32)}
    path = write(tmp_path / "w.safetensors", tensors)
    with pytest.warns(UnusualInputWarning, match=r"k_img\.lora_A\.weight.*ignored"):
        weights = read_lora(path, CFG, strict=False)
    assert weights.ignored == ("diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight",)
    assert set(weights.deltas) == {"blocks.self_attn.q.kernel"}


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputFileError, match=r"nope\.safetensors: no such LoRA file"):
        read_lora(tmp_path / "nope.safetensors", CFG)
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointFormatError, match=r"x\.safetensors: not a readable safetensors file"):
        read_lora(tmp_path / "x.safetensors", CFG)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_files(tmp_path, base_sd, dtype):
    """Released LoRAs are fp16 or bf16 (alpha too): read as float32 values of the stored numbers."""
    rng = np.random.default_rng(6)
    down, up = factors(rng, base_sd, "blocks.1.cross_attn.k", 4)
    down, up = down.astype(dtype), up.astype(dtype)
    want = dict(base_sd)
    want["blocks.1.cross_attn.k.weight"] = want["blocks.1.cross_attn.k.weight"] + 0.5 * (
        up.astype(np.float32) @ down.astype(np.float32))
    tensors = {"diffusion_model.blocks.1.cross_attn.k.lora_down.weight": down,
               "diffusion_model.blocks.1.cross_attn.k.lora_up.weight": up,
               "diffusion_model.blocks.1.cross_attn.k.alpha": np.asarray([2.0], dtype)}
    merged, _ = _merged(write(tmp_path / "h.safetensors", tensors), base_sd)
    assert rel_err(merged, to_ours(want)) <= TOL
