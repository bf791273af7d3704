"""Our trained adapters written in ComfyUI and diffusers naming: the keys the tools expect, per-expert files
for A14B, and a lossless round trip through `read_lora`."""

import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from wan22_jax.errors import InputError, WeightMappingError
from wan22_jax.lora.apply import apply_flat, flatten
from wan22_jax.lora.export import expert_path, export_lora, export_lora_file
from wan22_jax.lora.formats import OURS
from wan22_jax.lora.load import read_lora
from wan22_jax.lora.ours import LoraConfig, save_adapters
from wan22_jax.models.dit import WanModel
from wan22_jax.training.lora import apply_lora, init_lora

from .conftest import CFG

LCFG = LoraConfig(rank=2, alpha=5.0, targets=("blocks.*.self_attn.q", "blocks.1.ffn.2", "head.head"))


@pytest.fixture(scope="module")
def trained():
    params = nnx.to_pure_dict(nnx.split(WanModel(CFG, rngs=nnx.Rngs(0)))[1])
    rng = np.random.default_rng(0)
    lora = {p: {"a": np.asarray(ab["a"]), "b": rng.standard_normal(ab["b"].shape).astype(np.float32)}
            for p, ab in init_lora(params, LCFG).items()}
    return params, lora


def _keys(path):
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_comfyui_names_shapes_and_alpha(tmp_path, trained):
    _, lora = trained
    tensors = _keys(export_lora(tmp_path / "c.safetensors", lora, LCFG, CFG, "comfyui"))
    modules = ["blocks.0.self_attn.q", "blocks.1.self_attn.q", "blocks.1.ffn.2", "head.head"]  # not blocks.0.ffn.2
    assert set(tensors) == {f"diffusion_model.{m}.{s}" for m in modules for s in
                            ("lora_A.weight", "lora_B.weight", "alpha")}
    assert tensors["diffusion_model.blocks.1.ffn.2.lora_A.weight"].shape == (2, CFG.ffn_dim)  # [rank, in]
    assert tensors["diffusion_model.blocks.1.ffn.2.lora_B.weight"].shape == (CFG.dim, 2)      # [out, rank]
    assert float(tensors["diffusion_model.head.head.alpha"]) == 5.0
    np.testing.assert_array_equal(tensors["diffusion_model.blocks.1.self_attn.q.lora_A.weight"],
                                  lora["blocks.self_attn.q.kernel"]["a"][1].T)


def test_diffusers_names(tmp_path, trained):
    _, lora = trained
    tensors = _keys(export_lora(tmp_path / "d.safetensors", lora, LCFG, CFG, "diffusers"))
    assert set(tensors) == {f"transformer.{m}.{s}" for m in ("blocks.0.attn1.to_q", "blocks.1.attn1.to_q",
                                                            "blocks.1.ffn.net.2", "proj_out")
                            for s in ("lora_A.weight", "lora_B.weight")}
    np.testing.assert_allclose(tensors["transformer.proj_out.lora_B.weight"],
                               2.5 * lora["head.head.kernel"]["b"].T)  # alpha / rank folded in


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers"])
def test_round_trip_through_read_lora(tmp_path, trained, fmt):
    params, lora = trained
    weights = read_lora(export_lora(tmp_path / f"{fmt}.safetensors", lora, LCFG, CFG, fmt), CFG)
    assert weights.format == fmt
    ours = apply_flat(flatten(params), [(weights.deltas, 0.4)])
    want = flatten(apply_lora(params, lora, LCFG, 0.4))
    for k in want:
        np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-6, err_msg=k)


def test_our_training_file_reads_directly_and_converts(tmp_path, trained):
    """`wan22 train`'s own file is a format of its own for read_lora, and export_lora_file rewrites it."""
    params, lora = trained
    ours_file = save_adapters(tmp_path / "lora.safetensors", lora, LCFG)
    weights = read_lora(ours_file, CFG)
    assert weights.format == OURS
    want = flatten(apply_lora(params, lora, LCFG, 1.5))
    got = apply_flat(flatten(params), [(weights.deltas, 1.5)])
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-6, err_msg=k)
    comfy = read_lora(export_lora_file(ours_file, tmp_path / "c.safetensors", CFG), CFG)
    assert comfy.format == "comfyui"
    got = apply_flat(flatten(params), [(comfy.deltas, 1.5)])
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-6, err_msg=k)
    wider = dict(lora, **{"blocks.self_attn.q.kernel": {k: np.concatenate([v, v], axis=-2 if k == "a" else -1)
                                                        for k, v in lora["blocks.self_attn.q.kernel"].items()}})
    with pytest.raises(WeightMappingError, match=r"adapter 'blocks\.self_attn\.q\.kernel' has A \(2, 32, 2\)"):
        read_lora(save_adapters(tmp_path / "w.safetensors", wider, LCFG), CFG)


def test_per_expert_files_and_refusals(tmp_path, trained):
    _, lora = trained
    assert expert_path(tmp_path / "style.safetensors", "high_noise_model") == tmp_path / "style.high_noise.safetensors"
    assert expert_path("style.safetensors", "low_noise_model").name == "style.low_noise.safetensors"
    with pytest.raises(InputError, match=r"LoRA export format 'kohya': expected one of \('comfyui', 'diffusers'\)"):
        export_lora(tmp_path / "x.safetensors", lora, LCFG, CFG, "kohya")
    bigger = {"blocks.self_attn.q.kernel": {k: np.concatenate([v, v]) for k, v in
                                             lora["blocks.self_attn.q.kernel"].items()}}
    with pytest.raises(WeightMappingError, match=r"'blocks\.self_attn\.q\.kernel' layer 2 is not a Linear of a "
                                                 r"2-layer DiT"):
        export_lora(tmp_path / "x.safetensors", bigger, LCFG, CFG, "comfyui")
