"""Pipeline reference cases: official WanT2V / WanTI2V / WanI2V `generate()` on tiny random models, CPU.

As in shared/reference: `__init__` bypassed (object.__new__ + attributes), offload_model False, sp_size 1; the
tokenizer replaced by given ids (the official T5EncoderModel.__call__ still runs and trims); the initial noise is
what generate() drew from torch.Generator(seed), recorded and stored. The fp64 re-run (case_tools f64 build)
injects the same noise as float64. Per-step tensors are recorded by wrapping the scheduler's `step`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import case_tools as ct
from make_cases import DIT_BASE, T5_BASE, load_dit, load_t5, load_vae, make_dit, make_t5, make_vae, vae_cfg

EXPERTS = ("low_noise_model", "high_noise_model")


def _token_ids(g, text_len, n, vocab):
    ids = torch.zeros(text_len, dtype=torch.int32)
    ids[:n] = torch.randint(2, vocab, (n,), generator=g, dtype=torch.int32)
    ids[n - 1] = 1  # EOS
    mask = (torch.arange(text_len) < n).to(torch.int32)
    return ids, mask


def _image_tensor(image_uint8):
    """[3, H, W] float32 exactly as the pipelines compute it: to_tensor(img).sub_(0.5).div_(0.5)."""
    return torch.from_numpy(image_uint8.copy()).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)


@contextlib.contextmanager
def _recording(ns, noise_in, rec):
    """Records the generator draw (noise), every scheduler step and the VAE calls; in the fp64 run the noise
    draw returns the stored fp32 noise as float64 instead."""
    orig_randn = torch.randn

    def randn(*args, generator=None, **kw):
        if generator is None:
            return orig_randn(*args, **kw)
        if "noise" in rec:
            raise AssertionError("generate() drew from its generator more than once")
        x = orig_randn(*args, generator=generator, **kw) if noise_in is None else noise_in.to(kw.get("dtype") or torch.get_default_dtype())
        rec["noise"] = x.clone()
        return x

    steps = []
    originals = []
    for cls in (ns.unipc.FlowUniPCMultistepScheduler, ns.dpm.FlowDPMSolverMultistepScheduler):
        def step(self, model_output, timestep, sample, *a, _orig=cls.step, **kw):
            out = _orig(self, model_output, timestep, sample, *a, **kw)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            steps.append((model_output[0].clone(), prev[0].clone()))
            rec["timesteps"] = torch.as_tensor(self.timesteps).to(torch.int64)
            return out

        originals.append((cls, cls.step))
        cls.step = step
    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = orig_randn
        for cls, fn in originals:
            cls.step = fn
    rec["noise_pred_per_step"] = torch.stack([s[0] for s in steps])
    rec["latents_per_step"] = torch.stack([s[1] for s in steps])


def _text_encoder(ns, cfg, sd, tokens, rec):
    """The official T5EncoderModel wrapper with a tokenizer stub returning the given ids; records its outputs."""

    class Recorded(ns.t5.T5EncoderModel):
        def __call__(self, texts, device):
            out = super().__call__(texts, device)
            rec.setdefault("contexts", []).append(out[0].clone())
            return out

    enc = object.__new__(Recorded)
    enc.model = load_t5(ns, cfg, sd)
    enc.text_len = len(tokens["prompt"][0])
    enc.dtype = torch.float32
    enc.device = torch.device("cpu")
    enc.tokenizer = lambda texts, return_mask, add_special_tokens: tuple(
        x[None].long() for x in tokens[texts[0]])
    return enc


def _wrap_vae(vae, rec):
    enc, dec = vae.encode, vae.decode

    def encode(videos):
        rec["vae_encode_input"] = videos[0].clone()
        out = enc(videos)
        rec["cond_latent"] = out[0].clone()
        return out

    def decode(zs):
        rec["latents"] = zs[0].clone()
        return dec(zs)

    vae.encode, vae.decode = encode, decode
    return vae


def pipe_case(out: Path, name: str, root: str, *, kind: str, dit: dict, t5: dict, vae: dict, frame_num: int,
              steps: int, shift: float, guide, solver: str, seed: int, size=None, image_hw=None, max_area=None,
              boundary=None, lens=(9, 13), text_len=16):
    """kind: t2v_moe | i2v_moe | ti2v_t2v | ti2v_i2v."""
    g = torch.Generator().manual_seed(seed + 7)
    p_ids, p_mask = _token_ids(g, text_len, lens[0], t5["vocab_size"])
    n_ids, n_mask = _token_ids(g, text_len, lens[1], t5["vocab_size"])
    tokens = {"prompt": (p_ids, p_mask), "negative": (n_ids, n_mask)}
    image_uint8 = None
    if image_hw is not None:
        h, w = image_hw
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        base = np.stack([yy, xx, 0.5 + 0.5 * np.sin(6 * xx * yy)], -1) * 200
        noise = np.random.default_rng(seed).integers(0, 56, (h, w, 3))
        image_uint8 = np.clip(base + noise, 0, 255).astype(np.uint8)
    moe = kind.endswith("moe")
    ckpt = out / name / "checkpoint"
    vae_stride = (4, 8, 8) if vae["version"] == "2.1" else (4, 16, 16)

    results, noise = {}, None
    for f64 in (False, True):
        ns = ct.official(root, f64=f64)
        if not f64:
            sds = ({e: make_dit(ns, dit, seed + i, ckpt / e) for i, e in enumerate(EXPERTS)} if moe else
                   {"model": make_dit(ns, dit, seed, ckpt)})
            t5_sd = make_t5(ns, t5, seed + 100, ckpt)
            vae_path = make_vae(ns, vae, seed + 200, ckpt)
        rec = {}
        with torch.no_grad(), ct.precision(f64), _recording(ns, noise, rec):
            cls = {"t2v_moe": ns.t2v.WanT2V, "i2v_moe": ns.i2v.WanI2V}.get(kind, getattr(ns.ti2v, "WanTI2V"))
            pipe = object.__new__(cls)
            pipe.device = torch.device("cpu")
            pipe.rank, pipe.t5_cpu, pipe.init_on_cpu, pipe.sp_size = 0, False, False, 1
            pipe.num_train_timesteps = 1000
            pipe.param_dtype = torch.bfloat16  # autocast('cuda', bf16) is inactive on a CPU
            pipe.vae_stride, pipe.patch_size = vae_stride, tuple(dit["patch_size"])
            pipe.sample_neg_prompt = "negative"
            pipe.text_encoder = _text_encoder(ns, t5, t5_sd, tokens, rec)
            pipe.vae = _wrap_vae(load_vae(ns, vae, vae_path), rec)
            for k, sd in sds.items():
                setattr(pipe, k, load_dit(ns, dit, sd))
            if moe:
                pipe.boundary = boundary
            kw = dict(frame_num=frame_num, shift=shift, sample_solver=solver, sampling_steps=steps,
                      guide_scale=guide, n_prompt="", seed=seed, offload_model=False)
            if image_uint8 is not None:
                kw.update(img=Image.fromarray(image_uint8), max_area=max_area)
            else:
                kw.update(size=size)
            video = pipe.generate("prompt", **kw)
        if noise is None:
            noise = rec["noise"].float()
        res = {"context": rec["contexts"][0], "context_null": rec["contexts"][1], "timesteps": rec["timesteps"],
               "latents_per_step": rec["latents_per_step"], "noise_pred_per_step": rec["noise_pred_per_step"],
               "latents": rec["latents"], "video": video}
        if image_uint8 is not None:
            res["cond_latent"] = rec["cond_latent"]
            vae_in = rec["vae_encode_input"]
            first = vae_in[:, 0] if vae_in.ndim == 4 else vae_in
            res["_dev"] = float((first.float() - _image_tensor(image_uint8)).abs().max())
        results[f64] = res

    dev = results[False].pop("_dev", None)
    results[True].pop("_dev", None)
    inputs = {"prompt_ids": p_ids, "prompt_mask": p_mask, "neg_prompt_ids": n_ids, "neg_prompt_mask": n_mask,
              "noise": noise}
    idoc = {"prompt_ids": "tokenizer ids of the prompt, padded with 0 to text_len",
            "prompt_mask": "attention mask (1 = valid)", "neg_prompt_ids": "ids of the negative prompt",
            "neg_prompt_mask": "mask of the negative prompt",
            "noise": "the initial latent noise generate() drew with torch.Generator(seed); implementations must "
                     "accept explicit initial latents"}
    if image_uint8 is not None:
        inputs["image_uint8"] = image_uint8
        inputs["image"] = _image_tensor(image_uint8)
        idoc["image_uint8"] = "HWC uint8 RGB input image (PIL)"
        idoc["image"] = "float32 = to_tensor(image)*2-1 in [-1,1], what the pipeline feeds the VAE"
    odoc = {"context": "[Lp,text_dim] T5 output trimmed to prompt mask length",
            "context_null": "[Ln,text_dim] T5 output trimmed for negative prompt",
            "timesteps": "[steps] int64 timesteps used",
            "latents_per_step": "[steps,*latent] sample after each scheduler step",
            "noise_pred_per_step": "[steps,*latent] guided velocity fed to step()",
            "latents": "final latents (input to VAE decode)",
            "video": "[3,F,H,W] decoded video clamped to [-1,1]",
            "cond_latent": "image-conditioning VAE latent: ti2v: vae.encode([img [3,1,H,W]]) (first-frame latent "
                           "z[0]); i2v: vae.encode(first frame + zeros for F-1 frames) (without the 4 mask channels)"}
    component = {"t2v_moe": "pipe_t2v_moe", "i2v_moe": "pipe_i2v_moe", "ti2v_t2v": "pipe_ti2v_t2v",
                 "ti2v_i2v": "pipe_ti2v_i2v"}[kind]
    pipeline = {"t2v_moe": "wan.text2video.WanT2V.generate", "i2v_moe": "wan.image2video.WanI2V.generate",
                "ti2v_t2v": "wan.textimage2video.WanTI2V.generate (t2v branch)",
                "ti2v_i2v": "wan.textimage2video.WanTI2V.generate (i2v branch)"}[kind]
    call = {"pipeline": pipeline, "text_len": text_len, "sampling_steps": steps, "shift": shift,
            "guide_scale": list(guide) if isinstance(guide, tuple) else guide, "sample_solver": solver,
            "frame_num": frame_num, "vae_stride": list(vae_stride), "patch_size": list(dit["patch_size"]),
            "num_train_timesteps": 1000, "seed": seed, "sp_size": 1, "offload_model": False,
            "vae_version": vae["version"]}
    if moe:
        bt = boundary * 1000
        call.update(boundary=boundary, boundary_timestep=bt,
                    expert_per_step=[EXPERTS[1] if int(t) >= bt else EXPERTS[0]
                                     for t in results[False]["timesteps"]])
    if size is not None:
        call["size"] = list(size)
    if image_uint8 is not None:
        call.update(max_area=max_area, image_max_abs_dev_from_vae_input=dev,
                    image_note="image is supplied already at the target size, so the official resize is the "
                               "identity (checked: image_max_abs_dev_from_vae_input)")
    ct.write_case(out, name, component=component,
                  description=f"tiny end-to-end run of {pipeline} on CPU float32",
                  call=call, inputs=inputs, input_docs=idoc, outputs32=results[False], outputs64=results[True],
                  output_docs={k: odoc[k] for k in results[False]}, pipeline=True, integer_outputs=("timesteps",))


def pipeline_cases():
    # smaller DiT / T5 than the shipped pipelines (different dims, and a smaller footprint on disk)
    dit_small = dict(DIT_BASE, dim=32, ffn_dim=64, num_heads=2, freq_dim=32, text_dim=40)
    t5 = dict(T5_BASE, dim=40, dim_attn=32, dim_ffn=48)
    v21, v22 = vae_cfg("2.1", dim=4), vae_cfg("2.2", dim=2, dec_dim=4)  # 2.1 decoder: dim >= 4 (make_cases)
    ti2v_dit = dict(dit_small, model_type="ti2v", in_dim=48, out_dim=48)
    return {
        "pipe_t2v_moe_dpmpp_9f": lambda o, n, r: pipe_case(
            o, n, r, kind="t2v_moe", dit=dit_small, t5=t5, vae=v21, frame_num=9, size=(32, 48), steps=8,
            shift=3.0, guide=(3.0, 4.5), solver="dpm++", boundary=0.875, seed=1234, lens=(11, 5)),
        "pipe_ti2v_t2v_96x64": lambda o, n, r: pipe_case(
            o, n, r, kind="ti2v_t2v", dit=ti2v_dit, t5=t5, vae=v22, frame_num=9, size=(96, 64), steps=6,
            shift=5.0, guide=4.0, solver="unipc", seed=4321, lens=(7, 16)),
        "pipe_ti2v_i2v_96x64": lambda o, n, r: pipe_case(
            o, n, r, kind="ti2v_i2v", dit=ti2v_dit, t5=t5, vae=v22, frame_num=5, image_hw=(64, 96),
            max_area=96 * 64, steps=5, shift=7.0, guide=5.0, solver="unipc", seed=77, lens=(12, 3)),
        "pipe_i2v_moe_48x32_9f": lambda o, n, r: pipe_case(
            o, n, r, kind="i2v_moe", dit=dict(dit_small, model_type="i2v", in_dim=36), t5=t5, vae=v21,
            frame_num=9, image_hw=(48, 32), max_area=48 * 32, steps=7, shift=5.0, guide=(3.5, 2.5),
            solver="unipc", boundary=0.9, seed=99, lens=(9, 14)),
    }
