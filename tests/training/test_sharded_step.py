"""A train step sharded over 8 simulated CPU devices equals the single-device step: params after 3 steps within
1e-5 relative (fp32), for full training (TI2V-style, image-conditioned first frames), a LoRA on a frozen sharded
base, and one A14B expert on its timestep range; a sharded state saved and restored by Orbax keeps its values
and shardings; `train()` with a mesh in its config, stopped and resumed, ends where the one-device run ends.

JAX reads the device count once, so the comparisons run in a subprocess (`python -m` this module) with
XLA_FLAGS=--xla_force_host_platform_device_count=8, and report one JSON line.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wan22_jax.models.dit import DIT_PRESETS, WanModel
from wan22_jax.sharding import make_mesh
from wan22_jax.training import lora as lora_mod
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.placement import batch_shardings, dotted_specs, put, state_shardings, tree_shardings
from wan22_jax.training.loop import train
from wan22_jax.training.step import Placement, full_params, init_state, make_train_step

from .conftest import TINY_RUN
from .test_loader import write_cache
from .test_train_cache import BUCKETS as CACHE_BUCKETS, CACHE_RUN

ROOT = Path(__file__).parents[2]
DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
TOL = 1e-5
STEPS = 3

# (name, DiT preset, mesh, lora?, TrainConfig fields)
CASES = [
    ("ti2v_full", "tiny-ti2v", "fsdp=2,seq=2,tensor=2", False,
     dict(first_frame_prob=0.5, text_dropout=0.3, grad_accum=2, ema_decay=0.9)),
    ("ti2v_lora", "tiny-ti2v", "data=2,fsdp=4", True, dict(first_frame_prob=0.5)),
    ("a14b_high_noise_expert", "tiny-t2v", "fsdp=4,seq=2", False, dict(t_range=(0.875, 1.0), shift=12.0)),
]


def _batch(cfg, accum, batch, seed):
    rng = np.random.default_rng(seed)
    return {"latents": jnp.asarray(rng.standard_normal((accum, batch, cfg.out_dim, 3, 8, 8)), jnp.float32),
            "context": jnp.asarray(rng.standard_normal((accum, batch, 7, cfg.text_dim)), jnp.float32)}


def _rel(a, b) -> float:
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    return num / max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))


def run_case(name, preset, mesh_spec, lora, fields):
    cfg = DIT_PRESETS[preset]
    # lr 1e-4 (the default): Adam divides each gradient element by its own magnitude, so where a gradient is
    # near zero the fp32 reduction order of the sharded sums (~1e-7 relative) moves the update by a fraction of
    # lr; at lr 1e-3 that reaches 2e-5 of the largest weight after 3 steps (a self-attention k element)
    tc = TrainConfig(warmup_steps=0, total_steps=10, **fields)
    graphdef, nnx_state = nnx.split(WanModel(cfg, rngs=nnx.Rngs(0)))
    base = nnx.to_pure_dict(nnx_state)
    if lora:
        lcfg = lora_mod.LoraConfig(rank=2, targets=("blocks.*.self_attn.q", "blocks.*.ffn.0", "head.head"))
        params, frozen, params_fn = lora_mod.init_lora(base, lcfg), base, lora_mod.lora_params_fn(lcfg)
    else:
        params, frozen, params_fn = base, None, full_params
    batches = [_batch(cfg, tc.grad_accum, 4, seed) for seed in range(STEPS)]

    single = make_train_step(graphdef, tc, params_fn)
    state = init_state(params, tc)
    for b in batches:
        state, m_single = single(state, b, frozen)

    mesh = make_mesh(mesh_spec)
    specs = dotted_specs(nnx_state, "dit", mesh)
    sh = state_shardings(jax.eval_shape(lambda: init_state(params, tc)), {} if lora else specs, mesh)
    frozen_sh = None if frozen is None else tree_shardings(frozen, specs, mesh)
    placement = Placement(mesh, sh, batch_shardings(batches[0], mesh), frozen_sh)
    sharded = make_train_step(graphdef, tc, params_fn, placement=placement)
    s_state = put(init_state(params, tc), sh)
    s_frozen = put(frozen, frozen_sh)
    for b in batches:
        s_state, m_sharded = sharded(s_state, put(b, placement.batch), s_frozen)

    out = {"params_rel": _rel(s_state["params"], state["params"]),
           "loss_rel": abs(float(m_sharded["loss"]) - float(m_single["loss"])) / abs(float(m_single["loss"])),
           "grad_norm_rel": abs(float(m_sharded["grad_norm"]) - float(m_single["grad_norm"]))
           / float(m_single["grad_norm"]),
           "moved": _rel(state["params"], params)}
    if "ema" in state:
        out["ema_rel"] = _rel(s_state["ema"], state["ema"])
    # the state really is split: a weight (LoRA: the frozen base) and its Adam moment over several devices
    kernel = (s_frozen if lora else s_state["params"])["blocks"]["ffn"]["0"]["kernel"]
    out["weight_devices"] = len({s.device for s in kernel.addressable_shards if s.index != (slice(None),) * 3})
    if not lora:
        mu = s_state["opt_state"][1][0].mu["blocks"]["ffn"]["0"]["kernel"]
        out["moment_same_split"] = mu.sharding.is_equivalent_to(kernel.sharding, 3)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = TrainCheckpointer(tmp, async_save=False)
        ckpt.save(s_state)
        template = put(init_state(params, tc), sh)
        restored, _ = ckpt.restore(template)
        ckpt.close()
    out["restore_rel"] = _rel(restored, s_state)
    out["restore_same_shardings"] = all(a.sharding.is_equivalent_to(b.sharding, a.ndim) for a, b in
                                        zip(jax.tree.leaves(restored), jax.tree.leaves(s_state), strict=True))
    return out


def run_loop():
    """`wan22 train`'s loop with a mesh in the config: stopped after step 2 (a sharded checkpoint), resumed to 3,
    against the same run on one device."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(TINY_RUN, steps=3, train={**TINY_RUN["train"], "lr": 1e-4})
        single = train(dict(cfg, out_dir=f"{tmp}/one"))
        sharded = dict(cfg, out_dir=f"{tmp}/mesh", mesh={"spec": "data=2,fsdp=2,seq=2"})
        first = train(dict(sharded, stop_after=2))
        resumed = train(sharded)
        kernel = resumed["state"]["params"]["blocks"]["ffn"]["0"]["kernel"]
        out = {"params_rel": _rel(resumed["state"]["params"], single["state"]["params"]),
               "ema_rel": _rel(resumed["state"]["ema"], single["state"]["ema"]),
               "stopped_at": first["step"], "resumed_to": resumed["step"],
               "weight_devices": len({s.device for s in kernel.addressable_shards
                                      if s.index != (slice(None),) * 3})}
        # the same on a latent cache (bucketed batches from the Grain loader, held-out chunks of 2 and 1 samples)
        cache = write_cache(Path(tmp) / "cache", buckets=CACHE_BUCKETS, down=8)
        cfg = dict(CACHE_RUN, data={"kind": "cache", "dir": str(cache), "held_out": 4}, steps=4,
                   train={**CACHE_RUN["train"], "total_steps": 4})
        single = train(dict(cfg, out_dir=f"{tmp}/cache_one"))
        sharded = dict(cfg, out_dir=f"{tmp}/cache_mesh", mesh={"spec": "data=2,fsdp=2,seq=2"})
        train(dict(sharded, stop_after=2))
        resumed = train(sharded)
        out["cache_params_rel"] = _rel(resumed["state"]["params"], single["state"]["params"])
        out["cache_eval"] = [(Path(f"{tmp}/{d}/eval.csv").read_text()) for d in ("cache_one", "cache_mesh")]
        return out


def main():
    assert jax.device_count() == 8, jax.device_count()
    results = {c[0]: run_case(*c) for c in CASES}
    results["loop"] = run_loop()
    print("RESULT " + json.dumps(results), flush=True)


@pytest.mark.slow  # about 2 minutes on 2 cores (six compiles)
def test_sharded_step_equals_single_device():
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}".strip(),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "tests.training.test_sharded_step"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(lines[-1][len("RESULT "):])
    print(json.dumps(results, indent=1))
    loop = results.pop("loop")
    assert loop["stopped_at"] == 2 and loop["resumed_to"] == 3 and loop["weight_devices"] > 1, loop
    assert loop["params_rel"] <= TOL and loop["ema_rel"] <= TOL, loop
    assert loop["cache_params_rel"] <= TOL, loop
    one, mesh = ([[float(v) for v in row.split(",")] for row in text.strip().splitlines()[1:]]
                 for text in loop["cache_eval"])
    np.testing.assert_allclose(mesh, one, rtol=TOL)  # the held-out losses per step, sharded and not
    assert set(results) == {c[0] for c in CASES}
    for name, r in results.items():
        assert r["moved"] > 1e-4, (name, r)  # the steps changed the params: the comparison means something
        assert r["params_rel"] <= TOL, (name, r)
        assert r["loss_rel"] <= TOL and r["grad_norm_rel"] <= TOL, (name, r)
        assert r.get("ema_rel", 0.0) <= TOL, (name, r)
        assert r["weight_devices"] > 1, (name, r)
        assert r.get("moment_same_split", True), (name, r)
        assert r["restore_rel"] == 0.0 and r["restore_same_shardings"], (name, r)


if __name__ == "__main__":
    main()
