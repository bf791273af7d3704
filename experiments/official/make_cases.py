"""Generates extra reference cases with the official Wan2.2 code (module-level cases; pipelines in pipe_cases.py).

    python experiments/official/make_cases.py --official /tmp/wan22_official --out tests/data/reference_extra \
        [--only NAME ...]

Each case is written in the format of shared/reference (README.md there): tiny random weights in the official
release layout under checkpoint/, inputs/outputs.safetensors, case.json with float64_drift measured by re-running
the same official code in float64 (case_tools.official(f64=True)) and tolerance max(20*drift, 1e-5 | 1e-4).
The official code is read from --official (a local copy); nothing of it is written into the case folders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_tools as ct  # noqa: E402

DIT_BASE = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=64, ffn_dim=128, freq_dim=32,
                text_dim=48, out_dim=16, num_heads=4, num_layers=2, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6)
_DIT_EXTRA_KEYS = ("patch_size", "text_dim", "window_size", "qk_norm", "cross_attn_norm")


# --- checkpoints ---------------------------------------------------------------------------------------------


def make_dit(ns, cfg: dict, seed: int, folder: Path) -> dict:
    """A random official WanModel saved like the releases; returns its state dict (fp32)."""
    model = ct.randomize(ns.model.WanModel(**cfg), seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    path = folder / "config.json"
    written = json.loads(path.read_text())
    meta = dict(written)
    meta["_keys_written_by_save_pretrained"] = sorted(written)
    # ignore_for_config keeps these out of config.json; the tiny models need them (see shared README)
    meta.update({k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in _DIT_EXTRA_KEYS})
    path.write_text(json.dumps(dict(sorted(meta.items())), indent=2))
    return {k: v.clone() for k, v in model.state_dict().items()}


def load_dit(ns, cfg: dict, sd: dict):
    model = ns.model.WanModel(**cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False).to(torch.float64 if ns.f64 else torch.float32)


T5_BASE = dict(vocab_size=256, dim=48, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32,
               shared_pos=False, dropout=0.0)


def _t5_kwargs(cfg):
    kw = dict(cfg)
    kw["vocab"] = kw.pop("vocab_size")
    return kw


def make_t5(ns, cfg: dict, seed: int, folder: Path) -> dict:
    model = ct.randomize(ns.t5.T5Encoder(**_t5_kwargs(cfg)), seed)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(sd, folder / "models_t5_umt5-xxl-enc-bf16.pth")
    (folder / "t5_config.json").write_text(json.dumps(cfg, indent=2))
    return sd


def load_t5(ns, cfg: dict, sd: dict):
    model = ns.t5.T5Encoder(**_t5_kwargs(cfg))
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False).to(torch.float64 if ns.f64 else torch.float32)


VAE_FILE = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}


def vae_cfg(version: str, dim: int, dec_dim: int | None = None) -> dict:
    cfg = dict(version=version, dim=dim, z_dim=16 if version == "2.1" else 48, dim_mult=[1, 2, 4, 4],
               num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    if version == "2.2":
        cfg["dec_dim"] = dec_dim or dim
    return cfg


def _vae_module(ns, version):
    return ns.vae21 if version == "2.1" else ns.vae22


def make_vae(ns, cfg: dict, seed: int, folder: Path) -> Path:
    kw = {k: v for k, v in cfg.items() if k != "version"}
    # the last decoder conv x0.9, as in shared/reference: a few % of decoded pixels reach the [-1, 1] clamp
    model = ct.randomize(_vae_module(ns, cfg["version"]).WanVAE_(**kw), seed, final_scale={"decoder.head.2": 0.9})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / VAE_FILE[cfg["version"]]
    torch.save(model.state_dict(), path)
    (folder / "vae_config.json").write_text(json.dumps(cfg, indent=2))
    return path


def load_vae(ns, cfg: dict, path: Path):
    """The official wrapper (Wan2_1_VAE / Wan2_2_VAE, so its mean/std constants), tiny kwargs injected into the
    module's _video_vae factory."""
    mod = _vae_module(ns, cfg["version"])
    tiny = {k: v for k, v in cfg.items() if k not in ("version", "z_dim")}
    factory = mod._video_vae
    mod._video_vae = lambda **kw: factory(**{**kw, **tiny})
    dtype = torch.float64 if ns.f64 else torch.float32
    try:
        if cfg["version"] == "2.1":
            vae = mod.Wan2_1_VAE(z_dim=cfg["z_dim"], vae_pth=str(path), dtype=dtype, device="cpu")
        else:
            vae = mod.Wan2_2_VAE(z_dim=cfg["z_dim"], c_dim=cfg["dim"], vae_pth=str(path), dtype=dtype, device="cpu")
    finally:
        mod._video_vae = factory
    vae.model.to(dtype)
    return vae


def _dt(ns):
    return torch.float64 if ns.f64 else torch.float32


def _desc_dims(cfg, keys):
    return json.dumps({k: cfg[k] for k in keys})


# --- wan_dit -------------------------------------------------------------------------------------------------


def dit_case(out: Path, name: str, root: str, *, cfg: dict, B: int, grid: tuple[int, int, int],
             ctx_lens: list[int], t_vals: list[float], per_token: bool = False, seed: int = 0):
    """One wan_dit case: batch B (stacked), latent grid (F,H,W), per-sample context lengths and timesteps."""
    F, H, W = grid
    g = torch.Generator().manual_seed(seed + 1)
    seq_len = F * (H // cfg["patch_size"][1]) * (W // cfg["patch_size"][2])
    x = torch.randn(B, cfg["out_dim"] if cfg["model_type"] != "ti2v" else cfg["in_dim"], F, H, W, generator=g)
    L = max(ctx_lens)
    context = torch.zeros(B, L, cfg["text_dim"])
    for b, n in enumerate(ctx_lens):
        context[b, :n] = torch.randn(n, cfg["text_dim"], generator=g)
    y = None
    if cfg["model_type"] == "i2v":
        msk = torch.zeros(B, 4, F, H, W)
        msk[:, :, 0] = 1.0  # first frame given, as image2video builds it
        y = torch.cat([msk, torch.randn(B, 16, F, H, W, generator=g)], dim=1)
    t_vec = torch.tensor(t_vals, dtype=torch.float32)
    if per_token:
        # textimage2video.i2v: tokens of the first latent frame get t=0 (masks_like(zero=True)[1][:, ::2, ::2])
        first = (H // 2) * (W // 2)
        t_in = t_vec[:, None].expand(B, seq_len).clone()
        t_in[:, :first] = 0.0
    else:
        t_in = t_vec
    inputs = {"x": x, "context": context, "t": t_in}
    if y is not None:
        inputs["y"] = y

    results = {}
    for f64 in (False, True):
        ns = ct.official(root, f64=f64)
        if not f64:
            sd = make_dit(ns, cfg, seed, out / name / "checkpoint")
        with torch.no_grad(), ct.precision(f64):
            model = load_dit(ns, cfg, sd)
            dt = _dt(ns)
            t_call = t_in if (per_token or B == 1) else t_in[:, None].expand(B, seq_len)
            o = model([x[b].to(dt) for b in range(B)], t=t_call.to(dt),
                      context=[context[b, :n].to(dt) for b, n in enumerate(ctx_lens)], seq_len=seq_len,
                      y=None if y is None else [y[b].to(dt) for b in range(B)])
        results[f64] = {"out": torch.stack(o)}
    dims = _desc_dims(cfg, ["dim", "ffn_dim", "freq_dim", "text_dim", "num_heads", "num_layers", "text_len",
                            "in_dim", "out_dim"])
    t_doc = ("per-token timesteps [B,seq_len]: tokens of the first latent frame have t=0, all others the step "
             "timestep (as textimage2video.i2v builds it)" if per_token else
             "float timesteps [B] in [0,1000) (for B>1 the official forward was given t[:,None].expand(B,seq_len))")
    docs = {"x": "noisy latent video, stacked batch [B,C,F,H,W]",
            "context": f"text embeddings [B,L,text_dim], per-sample real lengths {ctx_lens} (the rest zero rows); "
                       "the official forward was given each sample's real rows and zero-pads to text_len",
            "t": t_doc,
            "y": "conditioning [B,20,F,H,W] = 4 mask channels + 16 image-latent channels; concatenated to x"}
    ct.write_case(out, name, component="wan_dit",
                  description=f"official WanModel ({cfg['model_type']}) forward, tiny dims {dims}",
                  call={"seq_len": seq_len, "model_type": cfg["model_type"], "batch_is_stacked": True,
                        "patch_size": list(cfg["patch_size"]), "text_len": cfg["text_len"],
                        "context_lens": ctx_lens},
                  inputs=inputs, input_docs=docs, outputs32=results[False], outputs64=results[True],
                  output_docs={"out": "model output (velocity) [B,out_dim,F,H,W]"}, pipeline=False)


# --- t5_encoder ----------------------------------------------------------------------------------------------


def t5_case(out: Path, name: str, root: str, *, cfg: dict, lens: list[int], L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    B = len(lens)
    ids = torch.zeros(B, L, dtype=torch.int32)
    mask = torch.zeros(B, L, dtype=torch.int32)
    for b, n in enumerate(lens):
        ids[b, :n] = torch.randint(2, cfg["vocab_size"], (n,), generator=g, dtype=torch.int32)
        ids[b, n - 1] = 1  # EOS, as the umt5 tokenizer ends a prompt
        mask[b, :n] = 1
    results = {}
    for f64 in (False, True):
        ns = ct.official(root, f64=f64)
        if not f64:
            sd = make_t5(ns, cfg, seed, out / name / "checkpoint")
        with torch.no_grad(), ct.precision(f64):
            results[f64] = {"hidden": load_t5(ns, cfg, sd)(ids.long(), mask.long())}
    ct.write_case(out, name, component="t5_encoder",
                  description="official wan.modules.t5.T5Encoder forward (raw, untrimmed, float32), tiny dims "
                              + json.dumps(cfg),
                  call={"seq_lens": lens},
                  inputs={"ids": ids, "mask": mask},
                  input_docs={"ids": "token ids [B,L] (pad id 0 after the mask length)",
                              "mask": "attention mask [B,L], 1=valid, 0=pad"},
                  outputs32=results[False], outputs64=results[True],
                  output_docs={"hidden": "final-norm encoder output for ALL L positions [B,L,dim]; "
                                         "T5EncoderModel.__call__ then returns hidden[b,:mask[b].sum()]"},
                  pipeline=False)


# --- VAE -----------------------------------------------------------------------------------------------------


def vae_case(out: Path, name: str, root: str, *, cfg: dict, mode: str, shape: tuple[int, ...], seed: int = 0):
    """mode 'encode': `shape` = video [B,3,T,H,W]; 'decode': `shape` = latent [B,z,Tl,h,w]."""
    g = torch.Generator().manual_seed(seed + 1)
    if mode == "encode":
        # smooth-ish video in [-1, 1]: noise through tanh keeps values inside the range the pipelines feed
        data = torch.tanh(1.5 * torch.randn(*shape, generator=g))
    else:
        data = torch.randn(*shape, generator=g)
    results = {}
    for f64 in (False, True):
        ns = ct.official(root, f64=f64)
        if not f64:
            path = make_vae(ns, cfg, seed, out / name / "checkpoint")
        with torch.no_grad(), ct.precision(f64):
            vae = load_vae(ns, cfg, path)
            items = [data[b].to(_dt(ns)) for b in range(shape[0])]
            res = vae.encode(items) if mode == "encode" else vae.decode(items)
        results[f64] = {("latent" if mode == "encode" else "video"): torch.stack(res)}
    v = cfg["version"]
    comp = f"vae{v.replace('.', '')}_{mode}"
    norm = f"Wan{v.replace('.', '_')}_VAE mean/std: z_norm = (mu - mean) * (1/std)"
    if mode == "encode":
        desc = f"official Wan{v.replace('.', '_')}_VAE.encode (inner WanVAE_.encode(x, scale) -> normalised mu)"
        ins, idoc = {"video": data}, {"video": "RGB video in [-1,1], [B,3,T,H,W], T=1+4k"}
        odoc = {"latent": "normalised mu [B,z_dim,1+(T-1)//4,H/s,W/s]"}
    else:
        desc = (f"official Wan{v.replace('.', '_')}_VAE.decode (un-normalise z/(1/std)+mean, WanVAE_.decode, "
                "clamp to [-1,1])")
        ins, idoc = {"latent": data}, {"latent": "normalised latent [B,z_dim,Tl,h,w]"}
        odoc = {"video": "decoded video clamped to [-1,1] [B,3,1+4*(Tl-1),h*s,w*s]"}
    clamp = {}
    if mode == "decode":
        vid = results[False]["video"]
        clamp = {"fraction_of_pixels_at_clamp": float((vid.abs() >= 1.0).float().mean())}
    ct.write_case(out, name, component=comp, description=f"{desc}, tiny {json.dumps(cfg)}",
                  call={"version": v, "z_dim": cfg["z_dim"], "normalisation": norm,
                        "temporal_chunks": "encode: frames 1,4,4,... ; decode: 1 latent frame at a time, causal "
                                           "cache across chunks", "batch_is_stacked": True, **clamp},
                  inputs=ins, input_docs=idoc, outputs32=results[False], outputs64=results[True], output_docs=odoc,
                  pipeline=False)


# --- schedulers ----------------------------------------------------------------------------------------------


def make_scheduler(ns, solver: str, steps: int, shift: float):
    """Built exactly as text2video.generate does; returns (scheduler, timesteps)."""
    if solver == "unipc":
        s = ns.unipc.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        s.set_timesteps(steps, device="cpu", shift=shift)
        return s, s.timesteps
    s = ns.dpm.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    timesteps, _ = ns.dpm.retrieve_timesteps(s, device="cpu", sigmas=ns.dpm.get_sampling_sigmas(steps, shift))
    return s, timesteps


def sched_case(out: Path, name: str, root: str, *, solver: str, steps: int, shift: float,
               shape: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    x_T = torch.randn(*shape, generator=g)
    x0 = 0.5 * torch.randn(*shape, generator=g)
    results = {}
    for f64 in (False, True):
        ns = ct.official(root, f64=f64)
        with torch.no_grad(), ct.precision(f64):
            sched, timesteps = make_scheduler(ns, solver, steps, shift)
            x, tgt = x_T.to(_dt(ns)), x0.to(_dt(ns))
            samples, vels = [x], []
            for t in timesteps:
                v = (x - tgt) / (float(t) / 1000.0) + 0.1 * torch.sin(x)
                x = sched.step(v, t, x, return_dict=False)[0]
                samples.append(x)
                vels.append(v)
        results[f64] = {"timesteps": torch.as_tensor(sched.timesteps).to(torch.int64),
                        "sigmas": torch.as_tensor(sched.sigmas), "samples": torch.stack(samples),
                        "velocities": torch.stack(vels), "final": x}
    cls = "FlowUniPCMultistepScheduler" if solver == "unipc" else "FlowDPMSolverMultistepScheduler"
    setup = ("set_timesteps(steps, shift=shift)" if solver == "unipc" else
             "sigmas = get_sampling_sigmas(steps, shift); retrieve_timesteps(scheduler, sigmas=sigmas)")
    ct.write_case(out, name, component=f"sched_{solver}",
                  description=f"official {cls} sampling loop driven by an analytic oracle velocity",
                  call={"steps": steps, "shift": shift, "num_train_timesteps": 1000, "solver": solver,
                        "scheduler_ctor": {"num_train_timesteps": 1000, "shift": 1, "use_dynamic_shifting": False},
                        "oracle": "v(x,t) = (x - x0) / (t/1000) + 0.1*sin(x), t = integer timestep from the "
                                  "schedule (as float)", "setup": setup},
                  inputs={"x_T": x_T, "x0": x0},
                  input_docs={"x_T": "initial sample (pure noise)", "x0": "oracle target"},
                  outputs32=results[False], outputs64=results[True],
                  output_docs={"timesteps": "[steps] int64, scheduler.timesteps",
                               "sigmas": "[steps+1] float32 scheduler.sigmas (last = 0)",
                               "samples": "[steps+1, *x_T.shape]; samples[0]=x_T, samples[i+1] = "
                                          "step(velocities[i], timesteps[i], samples[i])",
                               "velocities": "[steps, *x_T.shape] oracle outputs fed to step()",
                               "final": "samples[-1]"},
                  pipeline=False, integer_outputs=("timesteps",))


# --- the case list -------------------------------------------------------------------------------------------


def _dit(**kw):
    return {**DIT_BASE, **kw}


def module_cases():
    """name -> callable(out, name, root). Parameters chosen to differ from every shipped case."""
    # dim 2 is fine for the 2.1 encoder (channels 2..8) but its decoder halves channels down to 1, where the
    # RMS norm becomes sign(x) and the fp64 drift explodes: decoders use dim 4 (as shipped) for a sane tolerance
    v21 = vae_cfg("2.1", dim=2)
    v21_dec = vae_cfg("2.1", dim=4)
    v22 = vae_cfg("2.2", dim=2, dec_dim=4)
    return {
        # batch 2, different context lengths and timesteps per sample, non-square 5x6x10 latent grid
        "dit_t2v_b2_5x6x10": lambda o, n, r: dit_case(o, n, r, cfg=_dit(), B=2, grid=(5, 6, 10),
                                                      ctx_lens=[13, 6], t_vals=[937.0, 211.5], seed=11),
        # ti2v per-token t, batch 2, 3x4x6 grid
        "dit_ti2v_b2_pertoken": lambda o, n, r: dit_case(
            o, n, r, cfg=_dit(model_type="ti2v", in_dim=48, out_dim=48), B=2, grid=(3, 4, 6), ctx_lens=[16, 5],
            t_vals=[999.0, 402.0], per_token=True, seed=12),
        # i2v, portrait grid 2x6x4
        "dit_i2v_2x6x4": lambda o, n, r: dit_case(o, n, r, cfg=_dit(model_type="i2v", in_dim=36), B=1,
                                                  grid=(2, 6, 4), ctx_lens=[7], t_vals=[500.0], seed=13),
        # another official-style config: 3 layers, 6 heads (head_dim 12: rope split 4/4/4), text_dim 40 != dim,
        # freq_dim 64, text_len 12
        "dit_t2v_l3_h6": lambda o, n, r: dit_case(
            o, n, r, cfg=_dit(dim=72, ffn_dim=112, freq_dim=64, text_dim=40, num_heads=6, num_layers=3, text_len=12),
            B=1, grid=(4, 4, 4), ctx_lens=[12], t_vals=[733.25], seed=14),
        # batch 3 with masks 20 / 11 / 1, 3 layers, dim_attn != dim, head_dim 12
        "t5_b3_masks": lambda o, n, r: t5_case(
            o, n, r, cfg={**T5_BASE, "dim": 40, "dim_attn": 48, "dim_ffn": 72, "num_layers": 3},
            lens=[20, 11, 1], L=20, seed=21),
        # longer than the relative-position max distance 128: the clamped buckets are used
        "t5_len140": lambda o, n, r: t5_case(o, n, r, cfg=T5_BASE, lens=[135], L=140, seed=22),
        "vae21_encode_b2_5f_24x40": lambda o, n, r: vae_case(o, n, r, cfg=v21, mode="encode",
                                                             shape=(2, 3, 5, 24, 40), seed=31),
        "vae21_encode_1f_16x32": lambda o, n, r: vae_case(o, n, r, cfg=v21, mode="encode",
                                                          shape=(1, 3, 1, 16, 32), seed=32),
        "vae21_decode_b2_13f_24x40": lambda o, n, r: vae_case(o, n, r, cfg=v21_dec, mode="decode",
                                                              shape=(2, 16, 4, 3, 5), seed=33),
        "vae22_encode_b2_13f_32x48": lambda o, n, r: vae_case(o, n, r, cfg=v22, mode="encode",
                                                              shape=(2, 3, 13, 32, 48), seed=41),
        "vae22_decode_b2_1f": lambda o, n, r: vae_case(o, n, r, cfg=v22, mode="decode",
                                                       shape=(2, 48, 1, 2, 3), seed=43),
        "vae22_decode_13f": lambda o, n, r: vae_case(o, n, r, cfg=v22, mode="decode",
                                                     shape=(1, 48, 4, 3, 2), seed=44),
        "sched_unipc_s7_shift3": lambda o, n, r: sched_case(o, n, r, solver="unipc", steps=7, shift=3.0,
                                                            shape=(2, 4, 3, 6, 10), seed=51),
        "sched_unipc_s20_shift8": lambda o, n, r: sched_case(o, n, r, solver="unipc", steps=20, shift=8.0,
                                                             shape=(1, 4, 2, 4, 4), seed=52),
        "sched_dpmpp_s7_shift3": lambda o, n, r: sched_case(o, n, r, solver="dpm++", steps=7, shift=3.0,
                                                            shape=(2, 4, 3, 6, 10), seed=53),
        "sched_dpmpp_s20_shift8": lambda o, n, r: sched_case(o, n, r, solver="dpm++", steps=20, shift=8.0,
                                                             shape=(1, 4, 2, 4, 4), seed=54),
    }


def all_cases():
    from pipe_cases import pipeline_cases

    return {**module_cases(), **pipeline_cases()}


def main(argv=None):
    ct.run_makers(__doc__, all_cases(), argv)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
