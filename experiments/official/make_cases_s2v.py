"""Generates extra S2V reference cases with the official Wan2.2 code (`WanModel_S2V` and the S2V audio path).

    python experiments/official/make_cases_s2v.py --official /tmp/wan22_official --out tests/data/reference_extra \
        [--only NAME ...]

Same format and tolerance rule as make_cases.py (case_tools.write_case): tiny random weights in the release
layout under checkpoint/, float64_drift from re-running the same official code in float64. The official S2V
modules are imported without their package __init__ (it imports librosa, which the audio case replaces by a stub
returning the stored waveform: a float WAV that librosa.load(sr=16000) returns bit-exactly).

Cases (chosen to differ from the shipped s2v_dit / s2v_audio):
* s2v_dit_b2_3x8x12: batch 2 (stacked), a non-square 3x8x12 latent grid (12 frames a clip), 4 layers with audio
  injection after blocks 1 and 3, dim 16 (head width 8: RoPE split 2/1/1), text_dim 20, per-sample context
  lengths; both drop_motion_frames variants.
* s2v_audio_1s37_if12: a 21920-sample (1.37 s) waveform, 12 frames a clip, another random wav2vec2 (24 layers,
  hidden 24, 3 heads) -> num_repeat 2, the second clip partly past the audio (zero features).

The float64 re-run of the DiT needs one more rewrite than case_tools makes: the official `rope_precompute`
(s2v_utils.py) builds its output with `x.detach()....to(torch.float64)`, a copy for float32 tokens but the tokens
themselves for float64 ones, which it then overwrites with the RoPE factors (max|d| / max|ref| ~ 1 without the
fix); `_s2v_modules` adds `copy=True` there in the float64 copy only.
"""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_tools as ct  # noqa: E402
from load_official import import_official  # noqa: E402

SHARED_AUDIO = Path("/work/shared/reference/s2v_audio/checkpoint/wav2vec2-large-xlsr-53-english")
WAV2VEC_FOLDER = "wav2vec2-large-xlsr-53-english"

S2V_BASE = dict(model_type="s2v", patch_size=(1, 2, 2), text_len=12, in_dim=16, dim=16, ffn_dim=32, freq_dim=32,
                text_dim=20, out_dim=16, num_heads=2, num_layers=4, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6, cond_dim=16, audio_dim=16, num_audio_token=4, enable_adain=True,
                adain_mode="attn_norm", audio_inject_layers=[1, 3], zero_init=True, zero_timestep=True,
                enable_motioner=False, add_last_motion=True, enable_tsm=False, trainable_token_pos_emb=False,
                motion_token_num=1024, enable_framepack=True, framepack_drop_mode="padd")
_EXTRA_KEYS = ("patch_size", "text_dim", "window_size", "qk_norm", "cross_attn_norm")


def _s2v_modules(root: str, f64: bool):
    """(model_s2v, audio_encoder) modules of the fp32 or the fp64 build (case_tools._f64_source), imported without
    the package __init__ files; attention in the inputs' precision for fp64; librosa stubbed."""
    for name in [n for n in sys.modules if n == "wan" or n.startswith("wan.")]:
        del sys.modules[name]
    src = ct._f64_source(Path(root)) if f64 else Path(root)
    if f64:
        # rope_precompute builds its output with x.detach()...to(torch.float64): a copy for float32 tokens, but
        # the tokens themselves for float64 ones, which it then overwrites with the RoPE factors; the float64
        # re-run needs the copy the float32 run gets
        utils = src / "wan" / "modules" / "s2v" / "s2v_utils.py"
        text = utils.read_text()
        aliased = "2).to(torch.float64))"
        if text.count(aliased) != 1:
            raise RuntimeError(f"{utils}: expected one {aliased!r} in rope_precompute")
        utils.write_text(text.replace(aliased, "2).to(torch.float64, copy=True))"))
    for pkg_name in ("wan", "wan.modules", "wan.utils", "wan.modules.s2v"):
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = [str(src.joinpath(*pkg_name.split(".")))]
        sys.modules[pkg_name] = pkg
    if "librosa" not in sys.modules:  # only audio_encoder imports it; the audio case replaces librosa.load
        stub = types.ModuleType("librosa")
        stub.__spec__ = importlib.machinery.ModuleSpec("librosa", None)  # diffusers probes it with find_spec
        sys.modules["librosa"] = stub
    mods = {}
    for name in ("wan.modules.model", "wan.modules.s2v.motioner", "wan.modules.s2v.model_s2v",
                 "wan.modules.s2v.audio_encoder"):
        mods[name] = import_official(src, name)
        if f64 and hasattr(mods[name], "flash_attention"):
            mods[name].flash_attention = ct.any_dtype_attention
    return mods["wan.modules.s2v.model_s2v"], mods["wan.modules.s2v.audio_encoder"]


def _randomize_s2v(model, seed):
    ct.randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():  # README: the 25-layer audio mix 1 + 0.3 N keeps silu-normalised weights well conditioned
        w = model.casual_audio_encoder.weights
        w.copy_(1.0 + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype))
    return model


# --- s2v_dit -------------------------------------------------------------------------------------------------


def s2v_dit_case(out: Path, name: str, root: str, *, cfg: dict, B: int, grid: tuple[int, int, int],
                 ctx_lens: list[int], t_vals: list[float], seed: int = 0):
    F, H, W = grid
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, 16, F, H, W, generator=g)
    context = torch.zeros(B, max(ctx_lens), cfg["text_dim"])
    for b, n in enumerate(ctx_lens):
        context[b, :n] = torch.randn(n, cfg["text_dim"], generator=g)
    inputs = {"x": x, "t": torch.tensor(t_vals, dtype=torch.float32), "context": context,
              "ref_latents": torch.randn(B, 16, 1, H, W, generator=g),
              "motion_latents": torch.randn(B, 16, 19, H, W, generator=g),
              "cond_states": torch.randn(B, 16, F, H, W, generator=g),
              "audio_input": torch.randn(B, 25, cfg["audio_dim"], 4 * F, generator=g)}
    seq_len = F * (H // 2) * (W // 2)
    results = {}
    for f64 in (False, True):
        mod, _ = _s2v_modules(root, f64)
        kw = {k: (tuple(v) if isinstance(v, list) and k != "audio_inject_layers" else v) for k, v in cfg.items()}
        if not f64:
            model = _randomize_s2v(mod.WanModel_S2V(**kw), seed)
            folder = out / name / "checkpoint"
            folder.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(folder), safe_serialization=True)
            path = folder / "config.json"
            written = json.loads(path.read_text())
            meta = dict(written, _keys_written_by_save_pretrained=sorted(written))
            meta.update({k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in _EXTRA_KEYS})
            path.write_text(json.dumps(dict(sorted(meta.items())), indent=2))
            sd = {k: v.clone() for k, v in model.state_dict().items()}
        dt = torch.float64 if f64 else torch.float32
        with torch.no_grad(), ct.precision(f64):
            model = mod.WanModel_S2V(**kw)
            model.load_state_dict(sd, strict=True)
            model = model.eval().requires_grad_(False).to(dt)
            res = {}
            for key, drop in (("out", False), ("out_drop_motion", True)):
                o = model([x[b].to(dt) for b in range(B)], t=inputs["t"].to(dt),
                          context=[context[b, :n].to(dt) for b, n in enumerate(ctx_lens)], seq_len=seq_len,
                          ref_latents=inputs["ref_latents"].to(dt), motion_latents=inputs["motion_latents"].to(dt),
                          cond_states=inputs["cond_states"].to(dt), audio_input=inputs["audio_input"].to(dt),
                          motion_frames=[73, 19], add_last_motion=2, drop_motion_frames=drop)
                res[key] = torch.stack(o)
                if not drop:
                    res["audio_emb_local"] = model.merged_audio_emb
                    res["audio_emb_global"] = model.audio_emb_global
        results[f64] = res
    dims = json.dumps({k: cfg[k] for k in ("dim", "ffn_dim", "freq_dim", "text_dim", "num_heads", "num_layers",
                                           "text_len", "audio_dim", "audio_inject_layers")})
    ct.write_case(
        out, name, component="s2v_dit",
        description=f"official WanModel_S2V forward (framepack motion, ref latent, audio injection with AdaLN, pose "
                    f"cond), batch {B}, grid {F}x{H}x{W}, tiny dims {dims}",
        call={"seq_len": seq_len, "motion_frames": [73, 19], "add_last_motion": 2, "batch_is_stacked": True,
              "context_lens": ctx_lens,
              "variants": {"out": {"drop_motion_frames": False}, "out_drop_motion": {"drop_motion_frames": True}},
              "note": "x, context as lists of per-sample tensors (context trimmed to each sample's length); t [B]; "
                      "the other inputs stacked (as WanS2V.generate passes them)"},
        inputs=inputs,
        input_docs={"x": "noisy latent [B,16,F,H,W]", "t": "float timesteps [B]",
                    "context": f"text embeddings [B,L,text_dim], real lengths {ctx_lens}, zero rows after",
                    "ref_latents": "[B,16,1,H,W] reference latent", "motion_latents": "[B,16,19,H,W]",
                    "cond_states": "[B,16,F,H,W] pose latents", "audio_input": "[B,25,audio_dim,4F]"},
        outputs32=results[False], outputs64=results[True],
        output_docs={"out": "[B,16,F,H,W] velocity, drop_motion_frames=False",
                     "out_drop_motion": "[B,16,F,H,W] velocity, drop_motion_frames=True",
                     "audio_emb_local": "[B,F,5,dim] model.merged_audio_emb",
                     "audio_emb_global": "[B,F,1,dim] model.audio_emb_global"},
        pipeline=False)


# --- s2v_audio -----------------------------------------------------------------------------------------------


class _Double:
    """The fp64 re-run's wav2vec2: casts the processor's float32 input_values to float64."""

    def __init__(self, model):
        self.model, self.device = model, torch.device("cpu")

    def __call__(self, input_values, **kw):
        return self.model(input_values.double(), **kw)


def s2v_audio_case(out: Path, name: str, root: str, *, n_samples: int, infer_frames: int, hidden: int,
                   heads: int, seed: int = 0):
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

    rng = np.random.default_rng(seed + 1)
    t = np.arange(n_samples) / 16000.0
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(n_samples))
    wave = np.clip(wave, -1, 1).astype(np.float32)
    folder = out / name / "checkpoint" / WAV2VEC_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("preprocessor_config.json", "tokenizer_config.json", "vocab.json"):  # our own earlier tiny files
        shutil.copy(SHARED_AUDIO / f, folder / f)
    cfg = Wav2Vec2Config.from_pretrained(SHARED_AUDIO)
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_conv_pos_embedding_groups = hidden, heads, 4
    torch.manual_seed(seed)
    model = ct.randomize(Wav2Vec2ForCTC(cfg), seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    processor = Wav2Vec2Processor.from_pretrained(str(folder))
    results = {}
    for f64 in (False, True):
        _, audio_mod = _s2v_modules(root, f64)
        audio_mod.librosa = types.SimpleNamespace(load=lambda path, sr: (wave.copy(), 16000))
        enc = audio_mod.AudioEncoder.__new__(audio_mod.AudioEncoder)
        net = Wav2Vec2ForCTC.from_pretrained(str(folder)).eval()
        enc.processor, enc.video_rate = processor, 30
        enc.model = _Double(net.double()) if f64 else net
        with torch.no_grad(), ct.precision(f64):
            # WanS2V.encode_audio (fps 16, audio_sample_m 0), its lines as officially
            z = enc.extract_audio_feat("speech.wav", return_all_layers=True)
            bucket, num_repeat = enc.get_audio_embed_bucket_fps(z, fps=16, batch_frames=infer_frames, m=0)
            emb = bucket.unsqueeze(0)
            emb = emb.permute(0, 2, 1) if emb.ndim == 3 else emb.permute(0, 2, 3, 1)
            iv = processor(wave, sampling_rate=16000, return_tensors="pt").input_values
            hs = enc.model(iv, output_hidden_states=True).hidden_states
        results[f64] = {"input_values": iv, "hidden_states": torch.cat(hs), "audio_feat": z, "audio_emb": emb,
                        "num_repeat": torch.tensor([num_repeat], dtype=torch.int64)}
    ct.write_case(
        out, name, component="s2v_audio",
        description=f"official AudioEncoder + WanS2V.encode_audio on a tiny random wav2vec2 (24 layers, hidden "
                    f"{hidden}, {heads} heads), {n_samples} samples, infer_frames {infer_frames}",
        call={"sampling_rate": 16000, "infer_frames": infer_frames, "fps": 16, "audio_sample_m": 0,
              "video_rate": 30, "wav2vec_fps": 50, "transformers": __import__("transformers").__version__,
              "note": "hidden_states as transformers >= 5 returns them (the last one without the final layer_norm)"},
        inputs={"waveform": wave}, input_docs={"waveform": "mono float32 samples at 16 kHz in [-1,1]"},
        outputs32=results[False], outputs64=results[True],
        output_docs={"input_values": "[1,N] processor output", "hidden_states": "[25,T50,hidden] torch.cat",
                     "audio_feat": "[25,T30,hidden] 50 -> 30 fps", "audio_emb": "[1,25,hidden,bucket]",
                     "num_repeat": "[1] int64 clips the audio covers"},
        pipeline=False, integer_outputs=("num_repeat",))


def s2v_cases():
    return {
        "s2v_dit_b2_3x8x12": lambda o, n, r: s2v_dit_case(o, n, r, cfg=S2V_BASE, B=2, grid=(3, 8, 12),
                                                          ctx_lens=[7, 12], t_vals=[911.0, 137.5], seed=61),
        "s2v_audio_1s37_if12": lambda o, n, r: s2v_audio_case(o, n, r, n_samples=21920, infer_frames=12,
                                                              hidden=24, heads=3, seed=62),
    }


def main(argv=None):
    ct.run_makers(__doc__, s2v_cases(), argv, script="make_cases_s2v.py")


if __name__ == "__main__":
    main()
