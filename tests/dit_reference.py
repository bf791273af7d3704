"""An independent float64 numpy transcription of the official WanModel forward, on an official-layout state dict.

Used to check our DiT (through the converter) on shapes, batches and timestep layouts that no shipped case has.
It follows wan/modules/model.py operation by operation; it shares no code with wan22_jax.
"""

import math

import numpy as np


def official_state_dict(cfg, rng):
    """Random weights with the official names and torch layouts ([out, in] Linears, [O, I, kt, kh, kw] conv)."""
    d, f = cfg.dim, cfg.ffn_dim
    sd = {}

    def lin(name, o, i):
        sd[f"{name}.weight"] = rng.standard_normal((o, i)) / math.sqrt(i)
        sd[f"{name}.bias"] = 0.1 * rng.standard_normal(o)

    pt, ph, pw = cfg.patch_size
    sd["patch_embedding.weight"] = rng.standard_normal((d, cfg.in_dim, pt, ph, pw)) / math.sqrt(cfg.in_dim * pt * ph * pw)
    sd["patch_embedding.bias"] = 0.1 * rng.standard_normal(d)
    lin("text_embedding.0", d, cfg.text_dim)
    lin("text_embedding.2", d, d)
    lin("time_embedding.0", d, cfg.freq_dim)
    lin("time_embedding.2", d, d)
    lin("time_projection.1", 6 * d, d)
    for i in range(cfg.num_layers):
        p = f"blocks.{i}"
        for a in ("self_attn", "cross_attn"):
            for n in "qkvo":
                lin(f"{p}.{a}.{n}", d, d)
            sd[f"{p}.{a}.norm_q.weight"] = 1 + 0.1 * rng.standard_normal(d)
            sd[f"{p}.{a}.norm_k.weight"] = 1 + 0.1 * rng.standard_normal(d)
        sd[f"{p}.norm3.weight"] = 1 + 0.1 * rng.standard_normal(d)
        sd[f"{p}.norm3.bias"] = 0.1 * rng.standard_normal(d)
        lin(f"{p}.ffn.0", f, d)
        lin(f"{p}.ffn.2", d, f)
        sd[f"{p}.modulation"] = 0.1 * rng.standard_normal((1, 6, d))
    sd["head.modulation"] = 0.1 * rng.standard_normal((1, 2, d))
    lin("head.head", math.prod(cfg.patch_size) * cfg.out_dim, d)
    return {k: v.astype(np.float32) for k, v in sd.items()}


def _linear(sd, name, x):
    return x @ sd[f"{name}.weight"].astype(np.float64).T + sd[f"{name}.bias"]


def _layer_norm(x, eps, w=None, b=None):
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    return y if w is None else y * w + b


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x / (1 + np.exp(-x))


def _rope(x, grid, d):
    c = d // 2
    sub = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    tabs = [np.outer(np.arange(1024), 1.0 / np.power(10000, np.arange(0, s, 2, dtype=np.float64) / s)) for s in sub]
    f, h, w = grid
    ang = np.concatenate([np.broadcast_to(tabs[0][:f, None, None], (f, h, w, tabs[0].shape[1])),
                          np.broadcast_to(tabs[1][None, :h, None], (f, h, w, tabs[1].shape[1])),
                          np.broadcast_to(tabs[2][None, None, :w], (f, h, w, tabs[2].shape[1]))], -1)
    ang = ang.reshape(f * h * w, 1, c)
    z = x.reshape(*x.shape[:-1], c, 2)
    z = (z[..., 0] + 1j * z[..., 1]) * np.exp(1j * ang)
    return np.stack([z.real, z.imag], -1).reshape(x.shape)


def _attend(q, k, v):
    logits = np.einsum("qnd,knd->nqk", q, k) / math.sqrt(q.shape[-1])
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("nqk,knd->qnd", p, v)


def official_forward(cfg, sd, x, t, context, y=None):
    """One sample: x [C, F, H, W], t scalar or [L] per token, context [Lc, text_dim] -> [out_dim, F, H, W]."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = x.astype(np.float64)
    if y is not None:
        x = np.concatenate([x, y.astype(np.float64)], 0)
    pt, ph, pw = cfg.patch_size
    c_in, F, H, W = x.shape
    f, h, w = F // pt, H // ph, W // pw
    L, d, n = f * h * w, cfg.dim, cfg.num_heads
    patches = x.reshape(c_in, f, pt, h, ph, w, pw).transpose(1, 3, 5, 0, 2, 4, 6).reshape(L, -1)
    tok = patches @ sd["patch_embedding.weight"].reshape(d, -1).T + sd["patch_embedding.bias"]

    t = np.broadcast_to(np.asarray(t, np.float64), (L,))
    half = cfg.freq_dim // 2
    ang = np.outer(t, np.power(10000.0, -np.arange(half) / half))
    sin_emb = np.concatenate([np.cos(ang), np.sin(ang)], 1)
    e = _linear(sd, "time_embedding.2", _silu(_linear(sd, "time_embedding.0", sin_emb)))
    e0 = _linear(sd, "time_projection.1", _silu(e)).reshape(L, 6, d)

    ctx = np.zeros((cfg.text_len, cfg.text_dim))
    ctx[: len(context)] = context
    ctx = _linear(sd, "text_embedding.2", _gelu_tanh(_linear(sd, "text_embedding.0", ctx)))

    hd = d // n
    for i in range(cfg.num_layers):
        p = f"blocks.{i}"
        m = sd[f"{p}.modulation"][0][None] + e0  # [L, 6, d]
        hh = _layer_norm(tok, cfg.eps) * (1 + m[:, 1]) + m[:, 0]
        q = _rope(_rms(_linear(sd, f"{p}.self_attn.q", hh), sd[f"{p}.self_attn.norm_q.weight"], cfg.eps).reshape(L, n, hd), (f, h, w), hd)
        k = _rope(_rms(_linear(sd, f"{p}.self_attn.k", hh), sd[f"{p}.self_attn.norm_k.weight"], cfg.eps).reshape(L, n, hd), (f, h, w), hd)
        v = _linear(sd, f"{p}.self_attn.v", hh).reshape(L, n, hd)
        tok = tok + _linear(sd, f"{p}.self_attn.o", _attend(q, k, v).reshape(L, d)) * m[:, 2]
        hh = _layer_norm(tok, cfg.eps, sd[f"{p}.norm3.weight"], sd[f"{p}.norm3.bias"])
        q = _rms(_linear(sd, f"{p}.cross_attn.q", hh), sd[f"{p}.cross_attn.norm_q.weight"], cfg.eps).reshape(L, n, hd)
        k = _rms(_linear(sd, f"{p}.cross_attn.k", ctx), sd[f"{p}.cross_attn.norm_k.weight"], cfg.eps).reshape(-1, n, hd)
        v = _linear(sd, f"{p}.cross_attn.v", ctx).reshape(-1, n, hd)
        tok = tok + _linear(sd, f"{p}.cross_attn.o", _attend(q, k, v).reshape(L, d))
        hh = _layer_norm(tok, cfg.eps) * (1 + m[:, 4]) + m[:, 3]
        tok = tok + _linear(sd, f"{p}.ffn.2", _gelu_tanh(_linear(sd, f"{p}.ffn.0", hh))) * m[:, 5]
    m = sd["head.modulation"][0][None] + e[:, None, :]
    out = _linear(sd, "head.head", _layer_norm(tok, cfg.eps) * (1 + m[:, 1]) + m[:, 0])
    c = cfg.out_dim
    out = out.reshape(f, h, w, pt, ph, pw, c).transpose(6, 0, 3, 1, 4, 2, 5)
    return out.reshape(c, F, H, W)
