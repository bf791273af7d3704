"""One attention entry point with selectable implementations (the `attention` field of `ops.Kernels`).

* "xla": the reference, written out: logits in fp32, fp32 softmax, probabilities cast to the value dtype for the
  PV product (what flash attention does). Runs everywhere; the parity suite uses it. Above 1,024 queries it runs
  one cache-sized block of queries at a time and normalises after the PV product (`_blocked`). fp32 products run
  at Precision.HIGHEST (no TF32 / bf16 passes), bf16 ones at the default.
* "cpu": the same algorithm as one fused kernel on MKL (`wan22_jax.cpu_kernels.sgemm.attention`: per head and
  block of query rows, the logits stay in the core's cache), where it applies (fp32, CPU, one device, no logits
  bias); "xla" elsewhere.
* "dot_product": `jax.nn.dot_product_attention`, letting XLA pick the backend. Refused for NVIDIA GPUs: XLA
  materialises the whole [B, N, Lq, Lk] logits there (200 GiB for TI2V-5B at 720p, `wan22 aot`): use "cudnn".
* "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN flash attention on NVIDIA GPUs
  for bf16/fp16 inputs; fp32 calls (the VAE) run "xla".
* "splash": JAX's Pallas splash-attention kernel for TPUs (`jax.experimental.pallas.ops.tpu.splash_attention`),
  padded keys masked by segment ids; on other platforms the same kernel runs in Pallas' interpreter (slow: it is
  there so that CPU tests check the TPU path's numbers). Calls with a logits bias (T5) run "xla".

On a mesh (`jax.set_mesh`), "cudnn" and "splash" run inside `shard_map`: neither kernel can be partitioned by
XLA. Each device gets its batch rows (the `data` axis), its block of queries (`fsdp`) and its heads (`seq` and
`tensor`: where the DiT's Ulysses constraints put them), with the keys and values of those heads whole: the same
layout as the activation rules' `attn_tokens` / `attn_heads`, so no extra resharding is added around the kernel.
The platform (TPU kernel or interpreter, GPU or not) is the mesh's, never the host's: a CPU host compiling for a
TPU target gets the real Mosaic kernel (docs/architecture.md §3, docs/aot.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec

from wan22_jax.cpu_kernels import sgemm
from wan22_jax.errors import ConfigError
from wan22_jax.ops.kernels import ATTENTIONS
from wan22_jax.ops.matmul import precision_for
from wan22_jax.sharding.rules import ACTIVATION_RULES, resolve_spec

SPLASH_BLOCK = 128  # the kernel's default block: sequences are padded to a multiple of it


# Bytes of fp32 logits one query block may hold: small enough to stay in a CPU's caches between the two
# matmuls and the softmax (at 1,600 tokens x 6 heads, 36 MB blocks ran 1.4x slower than 12 MB ones).
LOGITS_BLOCK_BYTES = 24 * 2**20


def query_block(lq: int, lk: int | None = None, heads: int = 1, lo: int = 128, hi: int = 400,
                min_len: int = 1024) -> int | None:
    """The query block of the "xla" implementation for lq queries over lk keys: the largest divisor of lq in
    [lo, hi] whose [heads, block, lk] fp32 logits fit LOGITS_BLOCK_BYTES (else the smallest divisor there),
    when lq > min_len. None: run dense."""
    if lq <= min_len:
        return None
    sizes = [d for d in range(lo, hi + 1) if lq % d == 0]
    if not sizes:
        return None
    fits = [d for d in sizes if heads * d * (lq if lk is None else lk) * 4 <= LOGITS_BLOCK_BYTES]
    return max(fits) if fits else min(sizes)


def _dense(q, k, v, kv_mask, bias, scale):
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32,
                        precision=precision_for(q, k)) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if kv_mask is not None:
        logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnqk,bknd->bqnd", probs, v, preferred_element_type=jnp.float32,
                     precision=precision_for(probs, v))
    return out.astype(q.dtype)


def _blocked(q, k, v, kv_mask, scale, block, key_bias=None):
    """Long sequences: one block of queries at a time, so that a block's logits stay in cache instead of
    streaming an [N, Lq, Lk] matrix through memory three times, and memory stays bounded. Keys and values are
    laid out head-major once (not once per block), and each row is normalised after the PV product (one pass
    less over the probabilities, as flash attention does). Rows are independent: equal to `_dense` up to
    rounding. 1.2x (1,600 tokens) to 1.4x (3,600) faster than blocking `_dense` on a 2-core CPU."""
    b, lq, n, d = q.shape
    kt = jnp.transpose(k, (0, 2, 3, 1))  # [B, N, d, Lk]
    vt = jnp.transpose(v, (0, 2, 1, 3))  # [B, N, Lk, d]
    # the scale on the queries, not on the Lk-times larger logits
    qs = (q.astype(jnp.float32) * scale).astype(q.dtype)
    blocks = jnp.transpose(qs.reshape(b, lq // block, block, n, d), (1, 0, 3, 2, 4))  # [nb, B, N, block, d]

    def one(qb):
        logits = jnp.matmul(qb, kt, preferred_element_type=jnp.float32,
                            precision=precision_for(qb, kt))  # [B, N, block, Lk]
        if key_bias is not None:
            logits = logits + key_bias
        if kv_mask is not None:
            logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        m = jnp.max(logits, axis=-1, keepdims=True)
        p = jnp.exp(logits - m)
        out = jnp.matmul(p.astype(v.dtype), vt, preferred_element_type=jnp.float32,
                         precision=precision_for(vt))
        return out / jnp.sum(p, axis=-1, keepdims=True)

    out = jax.lax.map(one, blocks)  # [nb, B, N, block, d]
    return jnp.transpose(out, (1, 0, 3, 2, 4)).reshape(b, lq, n, d).astype(q.dtype)


def _per_key(key_bias):
    kb = jnp.asarray(key_bias, jnp.float32)
    return kb[None] if kb.ndim == 1 else kb  # [B or 1, Lk]


def _fused_cpu(q, k, v, kv_mask, key_bias, scale):
    """The fused MKL kernel, with the key mask folded into its per-key bias as -inf."""
    kb = jnp.zeros((1, k.shape[1]), jnp.float32) if key_bias is None else _per_key(key_bias)
    if kv_mask is not None:
        kb = jnp.where(kv_mask, kb, -jnp.inf)
    return sgemm.attention(q, k, v, kb, scale).astype(q.dtype)


@functools.lru_cache(maxsize=32)
def _splash_kernel(lq: int, lk: int, heads: int, interpret: bool):
    mask = splash_mask.MultiHeadMask([splash_mask.FullMask((lq, lk)) for _ in range(heads)])
    return splash_kernel.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _platform() -> str:
    """The platform the traced program is for: the context mesh's devices (`jax.set_mesh`, seen as the abstract
    mesh inside jit), else the default device's (an unsharded program runs there). Never the host's backend when
    a mesh says otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    if device is not None:
        return device.platform
    return jax.devices()[0].platform


def _splash(q, k, v, kv_mask, scale, interpret: bool):
    """[B, Lq, N, d] through the splash kernel, one example at a time (it takes [N, L, d]); queries and keys are
    padded to a multiple of SPLASH_BLOCK, padded keys (and kv_mask's) get another segment id than the queries.
    interpret: run Pallas' interpreter (any platform) instead of the Mosaic TPU kernel."""
    SegmentIds = splash_kernel.SegmentIds
    b, lq, n, d = q.shape
    lk = k.shape[1]
    pq, pk = -lq % SPLASH_BLOCK, -lk % SPLASH_BLOCK
    valid = jnp.ones((b, lk), bool) if kv_mask is None else kv_mask
    valid = jnp.pad(valid, ((0, 0), (0, pk)))
    qs = jnp.pad((q.astype(jnp.float32) * scale).astype(q.dtype), ((0, 0), (0, pq), (0, 0), (0, 0)))
    kp = jnp.pad(k.astype(q.dtype), ((0, 0), (0, pk), (0, 0), (0, 0)))
    vp = jnp.pad(v.astype(q.dtype), ((0, 0), (0, pk), (0, 0), (0, 0)))
    kernel = _splash_kernel(lq + pq, lk + pk, n, interpret)

    def one(qb, kb, vb, ok):
        seg = SegmentIds(q=jnp.zeros((lq + pq,), jnp.int32), kv=jnp.where(ok, 0, 1).astype(jnp.int32))
        return kernel(qb.transpose(1, 0, 2), kb.transpose(1, 0, 2), vb.transpose(1, 0, 2), segment_ids=seg)

    out = jax.vmap(one)(qs, kp, vp, valid)  # [B, N, Lq + pq, d]
    return out.transpose(0, 2, 1, 3)[:, :lq].astype(q.dtype)


def _cudnn(q, k, v, kv_mask, scale):
    mask = None if kv_mask is None else kv_mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=scale,
                                        implementation="cudnn").astype(q.dtype)


def _on_mesh(kernel, q, k, v, kv_mask):
    """`kernel(q, k, v, kv_mask)` per device inside `shard_map` over the context mesh: batch over `data`, queries
    over `fsdp`, heads over `seq` and `tensor` (each where it divides), keys and values whole (the DiT's Ulysses
    layout, ACTIVATION_RULES). Without a mesh (or on one device) the kernel runs as is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v, kv_mask)
    sizes = dict(mesh.shape)
    qs, _ = resolve_spec(("batch", "attn_tokens", "attn_heads", None), q.shape, ACTIVATION_RULES, sizes)
    ks, _ = resolve_spec(("batch", None, "attn_heads", None), k.shape, ACTIVATION_RULES, sizes)
    # one layout for the heads of q, k and v (a head split that divides q's heads divides k's: same count)
    ks = PartitionSpec(qs[0], None, qs[2], None)
    ms = PartitionSpec(qs[0], None)
    if kv_mask is None:
        fn = jax.shard_map(lambda a, b, c: kernel(a, b, c, None), mesh=mesh, in_specs=(qs, ks, ks),
                           out_specs=qs, check_vma=False)
        return fn(q, k, v)
    fn = jax.shard_map(kernel, mesh=mesh, in_specs=(qs, ks, ks, ms), out_specs=qs, check_vma=False)
    return fn(q, k, v, kv_mask)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, kv_mask: jax.Array | None = None,
              bias: jax.Array | None = None, key_bias: jax.Array | None = None, scale: float | None = None,
              impl: str = "xla") -> jax.Array:
    """Multi-head attention.

    Args:
      q: [B, Lq, N, d]; k, v: [B, Lk, N, d].
      kv_mask: optional [B, Lk] bool, False = padded key (ignored by every query).
      bias: optional additive logits bias broadcastable to [B, N, Lq, Lk] (T5's relative positions).
      key_bias: optional [Lk] or [B, Lk] fp32 additive bias per key, added after the scale (the DiT's log-count
        of its one padding text row). With it, splash and non-fp32 inputs run "xla" (in fp32 logits).
      scale: logits scale; None means 1/sqrt(d). (T5 uses 1.0.)
      impl: one of ops.kernels.ATTENTIONS.
    Returns:
      [B, Lq, N, d] in q's dtype.
    """
    if impl not in ATTENTIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {ATTENTIONS}")
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    platform = _platform() if impl in ("splash", "dot_product", "cudnn") else None
    if impl == "dot_product" and platform in ("gpu", "cuda"):
        raise ConfigError('attention "dot_product" is refused for NVIDIA GPUs: XLA does not make it flash '
                          'attention there but materialises the [B, N, Lq, Lk] logits (TI2V-5B at 720p: 200 GiB '
                          'per call); use "cudnn" (flash attention) or "xla" (query-blocked)')
    if impl == "splash" and bias is None and key_bias is None:
        interpret = platform != "tpu"
        return _on_mesh(lambda a, b, c, m: _splash(a, b, c, m, scale, interpret), q, k, v, kv_mask)
    if impl == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        impl = "xla"  # cuDNN's flash attention takes bf16/fp16 only (the VAE attends in fp32)
    if key_bias is not None and q.dtype != jnp.float32:
        impl = "xla"  # the other kernels take the bias in q's dtype: a bf16 log-count is 2 % off
    if impl == "cpu":
        if bias is None and sgemm.applies_attention(q, k, v) and sgemm.ready():
            return _fused_cpu(q, k, v, kv_mask, key_bias, scale)
        impl = "xla"
    if impl in ("xla", "splash"):
        block = query_block(q.shape[1], k.shape[1], q.shape[2]) if bias is None else None
        if block is not None:
            return _blocked(q, k, v, kv_mask, scale, block,
                            None if key_bias is None else _per_key(key_bias)[:, None, None, :])
    if key_bias is not None:  # [B or 1, 1, 1, Lk], with any other bias
        kb = _per_key(key_bias)[:, None, None, :]
        bias = kb if bias is None else bias.astype(jnp.float32) + kb
    if impl in ("xla", "splash"):
        return _dense(q, k, v, kv_mask, bias, scale)
    if impl == "cudnn" and bias is None:
        return _on_mesh(lambda a, b, c, m: _cudnn(a, b, c, m, scale), q, k, v, kv_mask)
    mask = None if kv_mask is None else kv_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(
        q, k.astype(q.dtype), v.astype(q.dtype), bias=None if bias is None else bias.astype(q.dtype),
        mask=mask, scale=scale, implementation="cudnn" if impl == "cudnn" else None)
    return out.astype(q.dtype)
