"""Extra Animate-14B reference cases (component animate_dit) generated with the official WanAnimateModel.

The official constructor hard-codes several widths (CLIP width 1280, face crops 512, the motion encoder's channel
table and 512-wide style / direction, the face encoder's 1024); a tiny model needs them small. As for the shipped
cases (shared/reference/README.md, hardcoded_overrides.json), the official classes are kept and only those
literals change: this script copies the official tree and rewrites the literal lines (`_patch_source`), then
imports `wan.modules.animate.model_animate` from the copy. The fp64 re-run rewrites that copy once more
(`case_tools._f64_source`) and measures float64_drift; tolerance = max(20 * drift, 1e-5) as for every module case.

Cases (each < 1 MB):
* animate_dit_b2_4x6x4: the shipped tiny widths, batch 2, latent grid 4 x 6 x 4 (9 face frames per sample, so the
  face encoder's stride-2 convs see an odd length), per-sample text lengths, with the relighting LoRA;
* animate_dit_l10_h4_s32: another config: 10 layers (two face adapter blocks), 4 heads of 4, text_dim 20,
  32 x 32 face crops (three motion-encoder ResBlocks), CLIP width 40, latent grid 3 x 4 x 8.

    mkdir -p /tmp/wan22_official && git -C /work/.mirror/Wan-Video+Wan2.2/repo archive HEAD wan | \\
        tar -x -C /tmp/wan22_official
    python experiments/official/make_cases_animate.py --official /tmp/wan22_official \\
        --out tests/data/reference_extra
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_tools as ct  # noqa: E402
from load_official import import_official  # noqa: E402

_PATCHED = Path("/tmp/wan22_official_animate_tiny")


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) < 1:
        raise RuntimeError(f"{path}: {old!r} not found (official source changed?)")
    path.write_text(text.replace(old, new))


def _patch_source(root: Path, hc: dict) -> Path:
    """A copy of the official tree with the hard-coded Animate widths set to `hc`'s values."""
    if _PATCHED.exists():
        shutil.rmtree(_PATCHED)
    shutil.copytree(root / "wan", _PATCHED / "wan")
    anim = _PATCHED / "wan" / "modules" / "animate"
    _replace(anim / "model_animate.py", "MLPProj(1280, dim)", f"MLPProj({hc['image_dim']}, dim)")
    _replace(anim / "model_animate.py", "Generator(size=512, style_dim=512, motion_dim=20)",
             f"Generator(size={hc['motion_encoder_size']}, style_dim={hc['motion_style_dim']}, "
             f"motion_dim={hc['motion_dim']})")
    me = anim / "motion_encoder.py"
    text = me.read_text()
    start = text.index("\t\tchannels = {")
    end = text.index("}", start) + 1
    table = ", ".join(f"{int(k)}: {v}" for k, v in hc["motion_encoder_channel_sizes"].items())
    me.write_text(text[:start] + "\t\tchannels = {" + table + "}" + text[end:])
    _replace(me, "torch.randn(512, motion_dim)", f"torch.randn({hc['motion_encoder_out_dim']}, motion_dim)")
    fb = anim / "face_blocks.py"
    w = hc["face_encoder_hidden_dim"]
    for old in ("CausalConv1d(in_dim, 1024 * num_heads, 3, stride=1)", "CausalConv1d(1024, 1024, 3, stride=2)",
                "nn.Linear(1024, hidden_dim)", "nn.LayerNorm(1024, elementwise_affine"):
        _replace(fb, old, old.replace("1024", str(w)))
    return _PATCHED


def _import_animate(root: Path, f64: bool):
    for name in [n for n in sys.modules if n == "wan" or n.startswith("wan.")]:
        del sys.modules[name]
    src = ct._f64_source(root) if f64 else root
    # bare packages: wan/modules/animate/__init__.py imports the CLIP module, which needs torchvision
    for pkg_name in ("wan", "wan.modules", "wan.utils", "wan.modules.animate"):
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = [str(src.joinpath(*pkg_name.split(".")))]
        sys.modules[pkg_name] = pkg
    mod = import_official(src, "wan.modules.animate.model_animate")
    if f64:
        mod.flash_attention = ct.any_dtype_attention
    # the face adapter calls flash_attn_func ([B, L, N, d] layout), absent on a CPU: softmax attention instead
    sys.modules["wan.modules.animate.face_blocks"].flash_attn_func = (
        lambda q, k, v: ct.any_dtype_attention(q, k, v))
    utils = import_official(src, "wan.modules.animate.animate_utils")
    return mod, utils


def _randomize(model, seed: int):
    """As shared/reference/README.md: the common rule, then the motion encoder's run-time-scaled weights N(0, 1)."""
    ct.randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("motion_encoder.") and name.endswith(".weight"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def _lora_state(model, rank: int, seed: int) -> dict:
    """relighting_lora.ckpt's PEFT keys for every target of `get_loraconfig`: A N(0,1)/sqrt(in), B 0.5 N/sqrt(r)."""
    g = torch.Generator().manual_seed(seed + 200)
    sd = {}
    for name, m in model.named_modules():
        if "blocks" in name and "face" not in name and "modulation" not in name and isinstance(m, torch.nn.Linear):
            sd[f"{name}.lora_A.default.weight"] = torch.randn(rank, m.in_features, generator=g) / m.in_features ** 0.5
            sd[f"{name}.lora_B.default.weight"] = 0.5 * torch.randn(m.out_features, rank, generator=g) / rank ** 0.5
    return sd


def animate_dit_case(out: Path, name: str, official_root: str, *, cfg: dict, hc: dict, B: int,
                     grid: tuple[int, int, int], ctx_lens: list[int], t_vals: list[float], lora_rank: int | None,
                     seed: int):
    F, H, W = grid
    S = hc["motion_encoder_size"]
    seq_len = F * (H // 2) * (W // 2)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, 16, F, H, W, generator=g)
    msk = torch.zeros(B, 4, F, H, W)
    msk[:, :, 0] = 1.0  # the reference slot, as generate builds y
    y = torch.cat([msk, torch.randn(B, 16, F, H, W, generator=g)], dim=1)
    context = torch.zeros(B, max(ctx_lens), cfg["text_dim"])
    for b, n in enumerate(ctx_lens):
        context[b, :n] = torch.randn(n, cfg["text_dim"], generator=g)
    clip_fea = torch.randn(B, 257, hc["image_dim"], generator=g)
    pose = torch.randn(B, 16, F - 1, H, W, generator=g)
    face = torch.rand(B, 3, 4 * (F - 2) + 1, S, S, generator=g) * 2 - 1
    t = torch.tensor(t_vals, dtype=torch.float32)
    inputs = dict(x=x, t=t, context=context, y=y, clip_fea=clip_fea, pose_latents=pose, face_pixel_values=face)

    root = _patch_source(Path(official_root), hc)
    ckpt = out / name / "checkpoint"
    results, sd, lora_sd = {}, None, None
    for f64 in (False, True):
        mod, utils = _import_animate(root, f64)
        with torch.no_grad(), ct.precision(f64):
            model = mod.WanAnimateModel(**cfg)
            if sd is None:
                _randomize(model, seed)
                model = model.float()
                ckpt.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(str(ckpt), safe_serialization=True)
                sd = {k: v.clone() for k, v in model.state_dict().items()}
                if lora_rank:
                    lora_sd = _lora_state(model, lora_rank, seed)
                    torch.save({"state_dict": lora_sd}, ckpt / "relighting_lora.ckpt")
            else:
                model.load_state_dict(sd)
            dt = torch.float64 if f64 else torch.float32
            model = model.to(dt).eval()

            def call(m):
                return torch.stack(m([x[b].to(dt) for b in range(B)], t=t.to(dt), clip_fea=clip_fea.to(dt),
                                     context=[context[b, :n].to(dt) for b, n in enumerate(ctx_lens)],
                                     seq_len=seq_len, y=[y[b].to(dt) for b in range(B)],
                                     pose_latents=pose.to(dt), face_pixel_values=face.to(dt)))

            res = {"out": call(model)}
            if lora_rank:
                from peft import set_peft_model_state_dict

                model.add_adapter(utils.get_loraconfig(transformer=model, rank=lora_rank, alpha=lora_rank))
                set_peft_model_state_dict(model, {k: v.to(dt) for k, v in lora_sd.items()})
                model = model.to(dt)
                res["out_relight_lora"] = call(model)
        results[f64] = res
    (ckpt / "hardcoded_overrides.json").write_text(json.dumps(hc, indent=2) + "\n")
    dims = json.dumps({k: cfg[k] for k in ("dim", "ffn_dim", "freq_dim", "text_dim", "num_heads", "num_layers",
                                           "text_len", "motion_encoder_dim")})
    docs_in = {"x": f"[B,16,F,H,W] noisy latents, B={B}, grid {list(grid)} (frame 0 = reference slot)",
               "t": "[B] float timesteps", "context": f"[B,L,text_dim] text rows, per-sample lengths {ctx_lens} "
               "(zero rows after; the official call got each sample's real rows)",
               "y": "[B,20,F,H,W] 4 mask + 16 latent channels", "clip_fea": "[B,257,image_dim] CLIP tokens",
               "pose_latents": "[B,16,F-1,H,W] pose latents",
               "face_pixel_values": "[B,3,4(F-2)+1,S,S] face crops in [-1,1]"}
    docs_out = {"out": "[B,16,F,H,W] velocity",
                "out_relight_lora": "[B,16,F,H,W] velocity with the relighting LoRA merged by PEFT"}
    call_doc = {"seq_len": seq_len, "batch_is_stacked": True, "context_lens": ctx_lens}
    if lora_rank:
        call_doc.update(lora_rank=lora_rank, lora_alpha=lora_rank, lora_scaling=1.0)
    ct.write_case(out, name, component="animate_dit",
                  description=f"official WanAnimateModel forward, tiny dims {dims} + hardcoded_overrides.json",
                  call=call_doc, inputs=inputs, input_docs=docs_in, outputs32=results[False],
                  outputs64=results[True], output_docs={k: docs_out[k] for k in results[False]}, pipeline=False,
                  extra={"generated_by": "experiments/official/make_cases_animate.py, official Wan2.2 commit "
                                         f"{ct.OFFICIAL_COMMIT}"})


BASE = dict(patch_size=(1, 2, 2), text_len=12, in_dim=36, dim=32, ffn_dim=64, freq_dim=32, text_dim=24, out_dim=16,
            num_heads=2, num_layers=5, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
            motion_encoder_dim=16, use_context_parallel=False, use_img_emb=True)
BASE_HC = dict(image_dim=32, motion_encoder_size=16, motion_style_dim=16, motion_dim=8, motion_encoder_out_dim=16,
               motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 16}, face_encoder_hidden_dim=16,
               face_encoder_num_heads=4)


def all_cases():
    l10 = dict(BASE, dim=16, ffn_dim=32, text_dim=20, text_len=10, num_heads=4, num_layers=10, motion_encoder_dim=12)
    l10_hc = dict(image_dim=40, motion_encoder_size=32, motion_style_dim=12, motion_dim=6, motion_encoder_out_dim=12,
                  motion_encoder_channel_sizes={"32": 4, "16": 8, "8": 8, "4": 12}, face_encoder_hidden_dim=8,
                  face_encoder_num_heads=4)
    return {
        "animate_dit_b2_4x6x4": dict(cfg=BASE, hc=BASE_HC, B=2, grid=(4, 6, 4), ctx_lens=[7, 12],
                                     t_vals=[873.0, 41.5], lora_rank=8, seed=31),
        "animate_dit_l10_h4_s32": dict(cfg=l10, hc=l10_hc, B=1, grid=(3, 4, 8), ctx_lens=[5], t_vals=[512.25],
                                       lora_rank=None, seed=37),
    }


def main(argv=None):
    cases = {name: functools.partial(animate_dit_case, **kw) for name, kw in all_cases().items()}
    ct.run_makers(__doc__, cases, argv)


if __name__ == "__main__":
    main()
