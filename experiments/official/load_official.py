"""Imports modules of the official Wan2.2 code (a local copy, never committed) so they run on a CPU.

The official package cannot be imported as is on a CPU machine: `wan/__init__.py` pulls in the speech/animate
pipelines, `t5.py` calls `torch.cuda.current_device()` at import time, and `flash_attention` asserts CUDA. This
helper registers bare `wan` / `wan.modules` packages (skipping their __init__ files), patches
`torch.cuda.current_device`, and swaps flash attention for a float32 softmax attention, which is what the
reference cases in shared/reference were produced with.

Get a copy of the official code with, e.g.:
    git -C /work/.mirror/Wan-Video+Wan2.2/repo archive HEAD wan | tar -x -C /tmp/wan22_official
and pass --official /tmp/wan22_official to the experiment scripts.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path


def fp32_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                   causal=False, window_size=(-1, -1), deterministic=False, dtype=None, version=None):
    """Drop-in for wan.modules.attention.flash_attention: [B, L, N, d] in, [B, L, N, d] out, fp32 softmax."""
    import torch
    import torch.nn.functional as F

    out_dtype = q.dtype
    q, k, v = (x.float().transpose(1, 2) for x in (q, k, v))
    mask = None
    if k_lens is not None:
        mask = (torch.arange(k.shape[2])[None, :] < k_lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale)
    return out.transpose(1, 2).to(out_dtype)


def import_official(root: str | Path, module: str):
    """Imports `wan.modules.<module>` (or another dotted path under wan/) from the official copy at `root`."""
    import torch

    root = Path(root)
    if not (root / "wan" / "modules" / "model.py").is_file():
        raise FileNotFoundError(f"{root}: not a copy of the official Wan2.2 code (no wan/modules/model.py)")
    torch.cuda.current_device = lambda: 0  # t5.py evaluates it at import time
    for name, path in (("wan", root / "wan"), ("wan.modules", root / "wan" / "modules"),
                       ("wan.utils", root / "wan" / "utils")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(path)]
            sys.modules[name] = pkg
    mod = importlib.import_module(module if module.startswith("wan.") else f"wan.modules.{module}")
    if hasattr(mod, "flash_attention"):
        mod.flash_attention = fp32_attention
    return mod
