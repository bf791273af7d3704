"""`train(config)`: one training run from a plain config dict (what `wan22 train CONFIG.json` reads).

    {"out_dir": "runs/mini",                      # loss.csv, eval.csv, loss.png, dit/ or lora.safetensors
     "world": {"height": 64, "width": 64, "frames": 17, "clips": 512, "seed": 0},
     "vae": "path/to/folder" | null,              # a Wan VAE folder (latents), or null: pooled pixels
     "text": {"t5": {T5Config fields}, "seed": 0, "vocab_size": 96,    # umT5 + tokenizer (TextConfig):
              "tokenizer": "unigram" | "word", "train": false},    #   frozen at random init, or trained
     "dit": {DiTConfig fields},
     "train": {TrainConfig fields},
     "lora": null | {"base": "dit folder", "rank": 4, "alpha": 4, "targets": [...]},
     "batch_size": 8, "steps": 1000, "checkpoint_dir": "runs/mini/ckpt", "keep": 3,
     "save_every": 100, "eval_every": 100, "eval_batch": 8, "progress": true}

Resuming is automatic: if `checkpoint_dir` holds a committed step, the state (params, optimizer, EMA, step,
rng, data position) is restored and the run continues from there (it says so, with the step).

Ctrl-C (SIGINT) stops cleanly: the step in flight finishes, a checkpoint of it is saved, and `train` returns
with "interrupted": True; running the same config again resumes there. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import csv
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from wan22_jax.config_utils import config_from_dict
from wan22_jax.convert.dit import load_dit, save_dit
from wan22_jax.convert.vae import load_vae
from wan22_jax.errors import ConfigError
from wan22_jax.models.dit import DiTConfig, WanModel
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.models.vae import encode
from wan22_jax.training import lora as lora_mod
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.data import LatentData, WorldConfig
from wan22_jax.training.step import full_params, init_state, make_eval_loss, make_train_step
from wan22_jax.training.text import (TextConfig, build_text_encoder, export_trained_t5, joint_params_fn,
                                     make_text_fn)

EVAL_TIMESTEPS = (100, 500, 900)
KEYS = {"out_dir", "world", "vae", "text", "dit", "train", "lora", "batch_size", "steps", "checkpoint_dir",
        "keep", "save_every", "eval_every", "eval_batch", "progress", "stop_after"}


SECTIONS = ("world", "text", "dit", "train")  # objects of config fields
COUNTS = {"steps": 1, "batch_size": 1, "keep": 1, "save_every": 1, "eval_every": 1, "eval_batch": 1,
          "stop_after": 1}  # integer fields and their minimum


def _check_keys(config: dict) -> None:
    """The top level of a training config: known fields, the required ones present, each of its type."""
    if not isinstance(config, dict):
        raise ConfigError(f"the training config must be a JSON object, found {type(config).__name__}")
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise ConfigError(f"unknown training config field(s) {unknown}; valid: {sorted(KEYS)}")
    for k in ("out_dir", "dit", "steps", "batch_size"):
        if k not in config:
            raise ConfigError(f"training config needs {k!r}")
    for k in SECTIONS:
        if k in config and not isinstance(config[k], dict):
            raise ConfigError(f"training config {k!r} must be an object of fields, found {config[k]!r}")
    for k, low in COUNTS.items():
        v = config.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ConfigError(f"training config {k}={v!r}: must be a whole number >= {low}")
    for k in ("out_dir", "checkpoint_dir", "vae"):
        if config.get(k) is not None and not isinstance(config[k], str):
            raise ConfigError(f"training config {k}={config[k]!r}: must be a path (a string)")
    if "progress" in config and not isinstance(config["progress"], bool):
        raise ConfigError(f"training config progress={config['progress']!r}: must be true or false")
    lora = config.get("lora")
    if lora is not None and not (isinstance(lora, dict) and isinstance(lora.get("base"), str)):
        raise ConfigError(f"training config lora={lora!r}: must be null or an object with a \"base\" DiT folder")


class _Interrupt:
    """Turns SIGINT into a flag checked between steps (main thread only: elsewhere signals cannot be caught)."""

    def __init__(self, enabled: bool):
        self.requested = False
        self._previous = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _video_encoder(vae_path):
    if vae_path is None:
        return None
    graphdef, state = nnx.split(load_vae(vae_path))
    return lambda video: encode(graphdef, state, video)


class _CsvLog:
    """Appends rows; on resume, drops rows past the restored step (a killed run may have logged them)."""

    def __init__(self, path: Path, header: list[str], resume_step: int):
        self.path, self.header = path, header
        rows = []
        if path.is_file() and resume_step > 0:
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.header).writerow(row)


def plot_losses(out_dir: Path) -> Path:
    """loss.png from loss.csv (and eval.csv when present)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(name):
        p = out_dir / name
        if not p.is_file():
            return []
        with open(p) as f:
            return list(csv.DictReader(f))

    train, ev = read("loss.csv"), read("eval.csv")
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps = np.array([int(r["step"]) for r in train])
        loss = np.array([float(r["loss"]) for r in train])
        ax.plot(steps, loss, lw=0.5, alpha=0.4, label="train (per step)")
        k = max(1, len(loss) // 50)
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), label=f"train ({k}-step mean)")
    for t in EVAL_TIMESTEPS:
        if ev:
            ax.plot([int(r["step"]) for r in ev], [float(r[f"t{t}"]) for r in ev], "o-", ms=3,
                    label=f"held-out, t={t}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train(config: dict[str, Any], *, kernels: Kernels = XLA) -> dict[str, Any]:
    """Runs (or resumes) a training run; writes out_dir/dit (and out_dir/t5, the trained encoder in the release
    layout, when text.train) once all steps are done.

    Args:
      config: the plain config dict (module docstring); every mistake raises ConfigError naming the field.
      kernels: the DiT's ops (`wan22_jax.ops.Kernels`; XLA by default, `Kernels.cpu()` on a CPU for speed).
    Returns:
      {"state", "step", "out_dir", "seconds", "last_loss", "interrupted" (Ctrl-C: checkpoint saved, outputs not
      written), "checkpoint_dir"}.
    """
    _check_keys(config)
    out_dir = Path(config["out_dir"])
    world_cfg = config_from_dict(WorldConfig, config.get("world", {}), source="config world")
    text_cfg = config_from_dict(TextConfig, config.get("text", {}), source="config text")
    dit_cfg = config_from_dict(DiTConfig, config["dit"], source="config dit")
    train_cfg = config_from_dict(TrainConfig, config.get("train", {}), source="config train")
    steps, batch_size = int(config["steps"]), int(config["batch_size"])
    dtype = jnp.bfloat16 if train_cfg.dtype == "bfloat16" else jnp.float32
    out_dir.mkdir(parents=True, exist_ok=True)  # after the config checks: a mistake leaves no folder behind

    lora_spec = config.get("lora")
    if lora_spec and text_cfg.train:
        raise ConfigError("text.train trains the encoder with the whole DiT; a LoRA run keeps both frozen")
    text_encoder, t5_cfg, t5_model = build_text_encoder(text_cfg, dit_cfg.text_len, out_dir / "tokenizer")
    # a trained encoder runs inside the loss on token ids; a frozen one is run once per prompt here
    text_kw = ({"tokenize": text_encoder.tokenizer} if text_cfg.train
               else {"encode_text": lambda prompts: text_encoder(prompts)[0]})
    encode_video = _video_encoder(config.get("vae"))
    data = LatentData(world_cfg, encode_video, **text_kw)
    held_out = LatentData(world_cfg, encode_video, split="held_out", seed_offset=1,
                          clips=int(config.get("eval_batch", 8)), **text_kw)
    eval_batch = held_out.batch(0, len(held_out))
    eval_batch = {k: v[0] for k, v in eval_batch.items()}

    text_fn = None
    if lora_spec:
        spec = dict(lora_spec)
        base_model = with_kernels(load_dit(spec.pop("base"), dtype=dtype, param_dtype=jnp.float32), kernels)
        lora_cfg = config_from_dict(lora_mod.LoraConfig, {**spec, "targets": tuple(spec.get("targets", ()))
                                                          or lora_mod.LoraConfig().targets},
                                    source="config lora")
        graphdef, base_state = nnx.split(base_model)
        frozen = nnx.to_pure_dict(base_state)
        params = lora_mod.init_lora(frozen, lora_cfg, seed=train_cfg.seed)
        params_fn = lora_mod.lora_params_fn(lora_cfg)
    else:
        model = WanModel(dit_cfg, dtype=dtype, param_dtype=jnp.float32, kernels=kernels,
                         rngs=nnx.Rngs(train_cfg.seed))
        graphdef, state0 = nnx.split(model)
        params, frozen, params_fn = nnx.to_pure_dict(state0), None, full_params
        if text_cfg.train:
            t5_graphdef, t5_state = nnx.split(t5_model)
            params = {"dit": params, "t5": nnx.to_pure_dict(t5_state)}
            params_fn, text_fn = joint_params_fn, make_text_fn(t5_graphdef)

    state = init_state(params, train_cfg)
    ckpt_dir = config.get("checkpoint_dir", out_dir / "ckpt")
    ckpt = TrainCheckpointer(ckpt_dir, keep=int(config.get("keep", 3)))
    start = 0
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(state)
        start = int(state["step"])
        tqdm.write(f"resuming from step {start} of {steps} (checkpoint in {ckpt_dir})")
    train_step = make_train_step(graphdef, train_cfg, params_fn, text_fn)
    eval_loss = make_eval_loss(graphdef, train_cfg, params_fn, text_fn)
    log = _CsvLog(out_dir / "loss.csv", ["step", "loss", "grad_norm", "lr", "seconds"], start)
    eval_log = _CsvLog(out_dir / "eval.csv", ["step"] + [f"t{t}" for t in EVAL_TIMESTEPS], start)
    save_every, eval_every = int(config.get("save_every", 100)), int(config.get("eval_every", 100))
    stop_after = config.get("stop_after")  # for tests: stop (without the final save) after this step

    def evaluate(step):
        row = {"step": step}
        for t in EVAL_TIMESTEPS:
            row[f"t{t}"] = float(eval_loss(state["params"], eval_batch, t / train_cfg.num_train_timesteps, frozen))
        eval_log.write(row)

    bar = tqdm(total=steps, initial=start, desc="training", unit="step", disable=not config.get("progress", True))
    t0 = time.perf_counter()
    loss = float("nan")
    if start == 0:
        evaluate(0)
    interrupt = _Interrupt(enabled=True)
    interrupted = False
    try:
        for step in range(start, steps):
            batch = data.batch(int(state["data_position"]), batch_size, train_cfg.grad_accum)
            state, metrics = train_step(state, batch, frozen)
            loss = float(metrics["loss"])
            log.write({"step": step + 1, "loss": f"{loss:.6f}", "grad_norm": f"{float(metrics['grad_norm']):.4f}",
                       "lr": f"{float(metrics['lr']):.3g}", "seconds": f"{time.perf_counter() - t0:.2f}"})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            done = step + 1
            if done % eval_every == 0 or done == steps:
                evaluate(done)
            if done % save_every == 0 or done == steps or interrupt.requested:
                ckpt.save(state, {"config": config, "step": done})
            if interrupt.requested:
                interrupted = True
                break
            if stop_after is not None and done >= int(stop_after):
                break
    finally:
        interrupt.restore()
    bar.close()
    ckpt.close()
    seconds = time.perf_counter() - t0
    if not interrupted and (stop_after is None or int(state["step"]) >= steps):
        _write_result(out_dir, state, dit_cfg, train_cfg, lora_spec and lora_cfg, t5_cfg if text_cfg.train else None)
        plot_losses(out_dir)
    return {"state": state, "step": int(state["step"]), "out_dir": out_dir, "seconds": seconds,
            "last_loss": loss, "interrupted": interrupted, "checkpoint_dir": ckpt_dir}


def _write_result(out_dir: Path, state, dit_cfg, train_cfg, lora_cfg, t5_cfg) -> None:
    """The trained weights (EMA weights if EMA is on): out_dir/dit (our Orbax DiT format) and, for a trained
    encoder (t5_cfg given), out_dir/t5 (release layout); or out_dir/lora.safetensors."""
    params = state["ema"] if train_cfg.ema_decay > 0 else state["params"]
    if t5_cfg is not None:
        export_trained_t5(out_dir / "t5", params["t5"], t5_cfg)
        params = params["dit"]
    if lora_cfg:
        lora_mod.save_lora(out_dir / "lora.safetensors", params, lora_cfg)
        return
    abstract = nnx.state(nnx.eval_shape(lambda: WanModel(dit_cfg)))
    nnx.replace_by_pure_dict(abstract, jax.tree.map(np.asarray, params))
    save_dit(abstract, dit_cfg, out_dir / "dit")
