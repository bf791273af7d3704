"""Checked against a real client: a tiny diffusers `WanTransformer3DModel` with a LoRA loaded and fused by diffusers
(`WanLoraLoaderMixin.lora_state_dict` + `load_lora_into_transformer` + `fuse_lora`, strength through
`set_adapters`) gives the output of our DiT (the same checkpoint through our Diffusers-layout converter) with the
same file merged by `wan22_jax.lora`, within the DiT tolerance (1e-5 relative max, fp32). Also for the files
our exporter writes from trained adapters.

Not compared here: LightX2V's `.diff` on norms and `diff_m` (diffusers drops them; `test_lora_load.py` checks
ours against the torch-layout arithmetic), and `head.head.alpha` (diffusers' converter refuses it).
"""

import copy
import json

import jax
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from flax import nnx

from wan22_jax.convert.dit import load_dit
from wan22_jax.lora.apply import merge_state
from wan22_jax.lora.export import export_lora
from wan22_jax.lora.load import read_lora
from wan22_jax.lora.ours import LoraConfig
from wan22_jax.training.lora import apply_lora, init_lora

from .conftest import shape_factors, write

TOL = 1e-5  # the DiT parity tolerance (fp32)
DIM, FFN, TEXT, FREQ, HEAD_OUT = 16, 24, 12, 16, 16  # head: patch 1x2x2 x 4 channels
BLOCK_LINEARS = {"self_attn.q": (DIM, DIM), "self_attn.k": (DIM, DIM), "self_attn.v": (DIM, DIM),
                 "self_attn.o": (DIM, DIM), "cross_attn.q": (DIM, DIM), "cross_attn.k": (DIM, DIM),
                 "cross_attn.v": (DIM, DIM), "cross_attn.o": (DIM, DIM), "ffn.0": (FFN, DIM), "ffn.2": (DIM, FFN)}
DIFFUSERS_NAMES = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
                   "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
                   "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
                   "ffn.2": "ffn.net.2"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(diffusers model, our (graphdef, state, cfg), inputs, base output) of one random checkpoint."""
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=TEXT, freq_dim=FREQ, ffn_dim=FFN, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("diffusers_dit")
    model.save_pretrained(folder)
    ours = load_dit(folder)
    graphdef, state = nnx.split(ours)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 3, 4, 4)).astype(np.float32)
    ctx = np.zeros((1, ours.cfg.text_len, TEXT), np.float32)  # the pipelines' zero-padded context
    ctx[:, :5] = rng.standard_normal((1, 5, TEXT))
    t = np.array([700.0], np.float32)
    return dict(model=model, graphdef=graphdef, state=state, cfg=ours.cfg, inputs=(x, t, ctx))


def _theirs(tiny, path, strength):
    model = copy.deepcopy(tiny["model"])
    state_dict, metadata = WanLoraLoaderMixin.lora_state_dict(str(path), return_lora_metadata=True)
    WanLoraLoaderMixin.load_lora_into_transformer(state_dict, transformer=model, adapter_name="t", metadata=metadata)
    model.set_adapters(["t"], [strength])
    model.fuse_lora()
    x, t, ctx = (torch.from_numpy(a) for a in tiny["inputs"])
    with torch.no_grad():
        return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0].numpy()


def _ours(tiny, state):
    return np.asarray(nnx.merge(tiny["graphdef"], state)(*tiny["inputs"]))


def _check(tiny, path, strength, ours_state=None):
    if ours_state is None:
        ours_state = merge_state(tiny["state"], [(read_lora(path, tiny["cfg"]).deltas, strength)])
    theirs, ours, base = _theirs(tiny, path, strength), _ours(tiny, ours_state), _ours(tiny, tiny["state"])
    err = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    assert err <= TOL, err
    assert float(np.max(np.abs(ours - base)) / np.max(np.abs(base))) > 1e-2  # the LoRA does something


def _block_loras(rng, rank, key, *, modules=tuple(BLOCK_LINEARS), names=("lora_down", "lora_up"), alpha=None,
                 bias_scale=None):
    """A LoRA on `modules` of both blocks as a tool writes it: down/up factors named key(i, m) + `names`, with
    alpha(i) as each module's `.alpha` and a random `.diff_b` of scale `bias_scale` (none when None). Values are
    drawn from rng in that order, so each file is fixed by its seed."""
    tensors = {}
    for i in range(2):
        for m in modules:
            k, shape = key(i, m), BLOCK_LINEARS[m]
            down, up = shape_factors(rng, shape, rank)
            tensors.update({f"{k}.{names[0]}.weight": down, f"{k}.{names[1]}.weight": up})
            if alpha is not None:
                tensors[f"{k}.alpha"] = np.float32(alpha(i))
            if bias_scale is not None:
                tensors[f"{k}.diff_b"] = bias_scale * rng.standard_normal(shape[0]).astype(np.float32)
    return tensors


def test_base_checkpoints_agree(tiny):
    out = _ours(tiny, tiny["state"])
    x, t, ctx = (torch.from_numpy(a) for a in tiny["inputs"])
    with torch.no_grad():
        ref = tiny["model"](hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0].numpy()
    assert float(np.max(np.abs(out - ref)) / np.max(np.abs(ref))) <= TOL


@pytest.mark.parametrize("alpha", [None, 12.0])
def test_diffusers_peft_file(tiny, tmp_path, alpha):
    """PEFT names; with alpha, the adapter config in the metadata as a diffusers pipeline's `save_lora_weights`
    writes it (fields prefixed with the component)."""
    rng = np.random.default_rng(1)
    tensors, modules = {}, []
    for i in range(2):
        for m in ("self_attn.q", "cross_attn.o", "ffn.0"):
            down, up = shape_factors(rng, BLOCK_LINEARS[m], 3)
            modules.append(f"blocks.{i}.{DIFFUSERS_NAMES[m]}")
            tensors[f"transformer.{modules[-1]}.lora_A.weight"] = down
            tensors[f"transformer.{modules[-1]}.lora_B.weight"] = up
    down, up = shape_factors(rng, (HEAD_OUT, DIM), 3)
    tensors.update({"transformer.proj_out.lora_A.weight": down, "transformer.proj_out.lora_B.weight": up})
    meta = None
    if alpha is not None:
        fields = {"r": 3, "lora_alpha": alpha, "target_modules": [*modules, "proj_out"]}
        meta = {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in fields.items()})}
    _check(tiny, write(tmp_path / "d.safetensors", tensors, meta), 0.8)


@pytest.mark.parametrize("names", [("lora_A", "lora_B"), ("lora_down", "lora_up")])
def test_comfyui_file_with_alpha_and_bias_diffs(tiny, tmp_path, names):
    rng = np.random.default_rng(2)
    tensors = _block_loras(rng, 4, lambda i, m: f"diffusion_model.blocks.{i}.{m}",
                           modules=("self_attn.k", "cross_attn.v", "ffn.2"), names=names, alpha=lambda i: 2.0 + i,
                           bias_scale=0.1)
    down, up = shape_factors(rng, (HEAD_OUT, DIM), 2)
    tensors.update({f"diffusion_model.head.head.{names[0]}.weight": down,
                    f"diffusion_model.head.head.{names[1]}.weight": up})
    _check(tiny, write(tmp_path / "c.safetensors", tensors), 1.3)


def test_lightx2v_style_file(tiny, tmp_path):
    """lora_down/lora_up on every block Linear without alpha, `.diff_b` biases, and the head as a full `.diff`."""
    rng = np.random.default_rng(3)
    tensors = _block_loras(rng, 2, lambda i, m: f"diffusion_model.blocks.{i}.{m}", bias_scale=0.05)
    tensors["diffusion_model.head.head.diff"] = 0.1 * rng.standard_normal((HEAD_OUT, DIM)).astype(np.float32)
    tensors["diffusion_model.head.head.diff_b"] = 0.1 * rng.standard_normal(HEAD_OUT).astype(np.float32)
    _check(tiny, write(tmp_path / "l.safetensors", tensors), 1.0)


def test_musubi_file(tiny, tmp_path):
    """diffusers' musubi converter wants every block Linear, each with an alpha."""
    rng = np.random.default_rng(4)
    tensors = _block_loras(rng, 4, lambda i, m: f"lora_unet_blocks_{i}_{m.replace('.', '_')}", alpha=lambda i: 1.0)
    _check(tiny, write(tmp_path / "m.safetensors", tensors), 0.9)


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers"])
def test_exported_training_lora_loads_in_diffusers(tiny, tmp_path, fmt):
    """`wan22 train`'s adapters written by `export_lora` give diffusers our merged model (training's own
    `apply_lora`), and read back through `read_lora` to the same weights."""
    params = nnx.to_pure_dict(tiny["state"])
    cfg = LoraConfig(rank=2, alpha=3.0, targets=("blocks.*.self_attn.q", "blocks.1.ffn.0", "blocks.0.cross_attn.o"))
    rng = np.random.default_rng(5)
    lora = {p: {"a": np.asarray(ab["a"]), "b": rng.standard_normal(ab["b"].shape).astype(np.float32) * 0.3}
            for p, ab in init_lora(params, cfg).items()}
    path = export_lora(tmp_path / f"{fmt}.safetensors", lora, cfg, tiny["cfg"], fmt)
    merged = apply_lora(params, lora, cfg, 0.6)
    state = nnx.split(nnx.merge(tiny["graphdef"], tiny["state"]))[1]
    nnx.replace_by_pure_dict(state, merged)
    _check(tiny, path, 0.6, ours_state=state)
    back = merge_state(tiny["state"], [(read_lora(path, tiny["cfg"]).deltas, 0.6)])
    got = nnx.to_pure_dict(back)
    err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.max(np.abs(np.asarray(b)))))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(merged), strict=True))
    assert err <= 1e-6
