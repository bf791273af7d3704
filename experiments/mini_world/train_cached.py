"""Trains the mini-world DiT and its umT5 encoder on a latent cache (`wan22 cache` of the mini-world files).

    python experiments/mini_world/train_cached.py CONFIG.json

A minimal driver written while `wan22 train` could not read a cache (it now can: `data: {"kind": "cache"}`,
dit_wan22_train.json). The run is the English-only model's recipe (same DiT, encoder, optimizer, EMA, text
dropout), with batches from
`training/loader.py`'s Loader (token ids: the encoder trains with the DiT) instead of the procedural stream, and
the same training step, checkpoints (resumes after a kill), loss.csv / eval.csv / loss.png and outputs
(out_dir/dit, out_dir/t5) as `wan22 train`. Config (dit_cached*.json): the run config's dit, train, text.t5,
batch_size, steps, checkpoint and eval sections plus
{"cache": {"train": DIR, "held_out": DIR}, "tokenizer": DIR} (the tokenizer the cache was made with), and
optionally "init_checkpoint": DIR (a second phase: start from that run's newest EMA weights with a fresh
optimizer and schedule).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.config_utils import config_from_dict
from wan22_jax.errors import ConfigError
from wan22_jax.models.dit import DiTConfig, WanModel
from wan22_jax.models.t5 import T5Config, random_t5
from wan22_jax.models.tokenizer import Tokenizer
from wan22_jax.training.cache import CachedDataset, tokenizer_hash
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.loader import Loader
from wan22_jax.training.loop import EVAL_TIMESTEPS, _CsvLog, _write_result, plot_losses
from wan22_jax.training.step import init_state, make_eval_loss, make_train_step
from wan22_jax.training.text import joint_params_fn, make_text_fn


def eval_batch(held: CachedDataset, n: int) -> dict:
    """The first n held-out samples (sorted by key: both captions of each clip) as one token-id batch."""
    rows = [held.load(i) for i in range(min(n, len(held)))]
    null = held.null()
    out = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in ("latents", "ids", "mask")}
    out.update({f"null_{k}": jnp.asarray(np.broadcast_to(null[k], out[k].shape)) for k in ("ids", "mask")})
    return out


def train(cfg: dict) -> dict:
    out_dir = Path(cfg["out_dir"])
    dit_cfg = config_from_dict(DiTConfig, cfg["dit"], source="dit")
    train_cfg = config_from_dict(TrainConfig, cfg["train"], source="train")
    t5_cfg = config_from_dict(T5Config, cfg["text"]["t5"], source="text.t5")
    steps, batch_size = int(cfg["steps"]), int(cfg["batch_size"])
    tokenizer = Tokenizer(cfg["tokenizer"], text_len=dit_cfg.text_len)
    data = CachedDataset(cfg["cache"]["train"])
    held = CachedDataset(cfg["cache"]["held_out"])
    for d in (data, held):
        d.check(z_dim=dit_cfg.in_dim, text_dim=None, text_len=dit_cfg.text_len)
        if d.manifest["tokenizer"] != tokenizer_hash(tokenizer):
            raise ConfigError(f"{d.dir} was cached with another tokenizer than {cfg['tokenizer']}")
        if max(r["tokens"] for r in d.records) > dit_cfg.text_len:
            raise ConfigError(f"{d.dir}: a caption is longer than text_len {dit_cfg.text_len}")
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = Loader(data, batch_size=batch_size, grad_accum=train_cfg.grad_accum, seed=train_cfg.seed, text="ids")
    ev = eval_batch(held, cfg["eval"]["batch"])

    model = WanModel(dit_cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(train_cfg.seed))
    graphdef, dit_state = nnx.split(model)
    t5 = random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=cfg["text"].get("seed", 0))
    t5_graphdef, t5_state = nnx.split(t5)
    params = {"dit": nnx.to_pure_dict(dit_state), "t5": nnx.to_pure_dict(t5_state)}
    text_fn = make_text_fn(t5_graphdef)
    state = init_state(params, train_cfg)
    if cfg.get("init_checkpoint"):  # a second phase: start from another run's EMA weights, fresh optimizer
        src = TrainCheckpointer(Path(cfg["init_checkpoint"]), keep=100)
        restored, _ = src.restore(state)
        src.close()
        state = init_state(restored.get("ema", restored["params"]), train_cfg)
    ckpt_dir = Path(cfg["checkpoint"]["dir"])
    ckpt = TrainCheckpointer(ckpt_dir, keep=cfg["checkpoint"]["keep"])
    start = 0
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(state)
        start = int(state["step"])
        print(f"resumed from step {start} of {steps} ({ckpt_dir})", flush=True)
    train_step = make_train_step(graphdef, train_cfg, joint_params_fn, text_fn)
    eval_loss = make_eval_loss(graphdef, train_cfg, joint_params_fn, text_fn)
    log = _CsvLog(out_dir / "loss.csv", ["step", "loss", "grad_norm", "lr", "seconds"], start)
    eval_log = _CsvLog(out_dir / "eval.csv", ["step"] + [f"t{t}" for t in EVAL_TIMESTEPS], start)

    def evaluate(step):
        row = {"step": step}
        for t in EVAL_TIMESTEPS:
            row[f"t{t}"] = float(eval_loss(state["params"], ev, t / train_cfg.num_train_timesteps))
        eval_log.write(row)
        print(f"step {step}: held-out loss " + " ".join(f"t{t} {row[f't{t}']:.4f}" for t in EVAL_TIMESTEPS),
              flush=True)

    if start == 0:
        evaluate(0)
    t0 = time.perf_counter()
    loss = float("nan")
    batches = loader.iterator(int(state["data_position"]))
    for step in range(start, steps):
        _, batch = next(batches)
        state, metrics = train_step(state, jax.tree.map(jnp.asarray, batch))
        loss = float(metrics["loss"])
        done = step + 1
        log.write({"step": done, "loss": f"{loss:.6f}", "grad_norm": f"{float(metrics['grad_norm']):.4f}",
                   "lr": f"{float(metrics['lr']):.3g}", "seconds": f"{time.perf_counter() - t0:.2f}"})
        if done % 100 == 0:
            print(f"step {done}: loss {loss:.4f} ({(time.perf_counter() - t0) / (done - start):.3f} s/step)",
                  flush=True)
        if done % cfg["eval"]["every"] == 0 or done == steps:
            evaluate(done)
        if done % cfg["checkpoint"]["every"] == 0 or done == steps:
            ckpt.save(state, {"config": cfg, "step": done})
    ckpt.close()
    seconds = time.perf_counter() - t0
    _write_result(out_dir, state, dit_cfg, None, t5_cfg)
    plot_losses(out_dir)
    return {"step": int(state["step"]), "seconds": seconds, "last_loss": loss}


def export_checkpoint(cfg: dict, out_dir: Path) -> int:
    """Writes the newest checkpoint's weights (EMA) as out_dir/dit and out_dir/t5 (a run still going); returns
    its step."""
    dit_cfg = config_from_dict(DiTConfig, cfg["dit"], source="dit")
    train_cfg = config_from_dict(TrainConfig, cfg["train"], source="train")
    t5_cfg = config_from_dict(T5Config, cfg["text"]["t5"], source="text.t5")
    _, dit_state = nnx.split(WanModel(dit_cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
    _, t5_state = nnx.split(random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=0))
    template = init_state({"dit": nnx.to_pure_dict(dit_state), "t5": nnx.to_pure_dict(t5_state)}, train_cfg)
    ckpt = TrainCheckpointer(Path(cfg["checkpoint"]["dir"]), keep=cfg["checkpoint"]["keep"])
    state, _ = ckpt.restore(template)
    ckpt.close()
    _write_result(out_dir, state, dit_cfg, None, t5_cfg)
    return int(state["step"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--export", help="write the newest checkpoint's weights to this folder and stop")
    args = ap.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    if args.export:
        print(f"step {export_checkpoint(cfg, Path(args.export))} written to {args.export}")
        return
    out = train(cfg)
    print(f"DiT + encoder: {out['step']} steps, {out['seconds']:.0f} s, last loss {out['last_loss']:.4f}")


if __name__ == "__main__":
    main()
