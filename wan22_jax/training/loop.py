"""`train(config)`: one training run from a `RunConfig` (training/run_config.py: the typed, documented tree that
`wan22 train CONFIG.json` reads; `wan22 train --help` lists every field), e.g.

    {"out_dir": "runs/mini", "steps": 1000, "batch_size": 8,
     "data": {"kind": "world"} | {"kind": "cache", "dir": "cache/folder", "held_out": 8},
     "world": {"height": 64, "width": 64, "frames": 17, "clips": 512},
     "vae": "path/to/folder" | null, "text": {...}, "dit": {DiTConfig fields}, "train": {TrainConfig fields},
     "lora": null | {"base": "dit folder", "rank": 4, "alpha": 4, "targets": [...]},
     "mesh": {"spec": "fsdp=4,seq=2"}, "checkpoint": {"dir": null, "keep": 3, "every": 100},
     "eval": {"every": 100, "batch": 8}}

With data.kind "cache" (a `wan22 cache` folder) the batches come from training/loader.py's Loader: one bucket
per batch, the order fixed by train.seed, token ids when the text encoder trains with the DiT ("text":
{"train": true}, with text.tokenizer_dir the cache's tokenizer) and the cached contexts otherwise; the held-out
samples (data.held_out) are evaluated bucket by bucket.

With a mesh, the parameters, optimizer state, EMA and batches are split by the inference rules
(training/placement.py) and the step runs as one sharded program; the checkpoints hold the sharded state.

Resuming is automatic: if the checkpoint folder holds a committed step, the state (params, optimizer, EMA, step,
rng, data position) is restored and the run continues from there (it says so, with the step).

Ctrl-C (SIGINT) stops cleanly: the step in flight finishes, a checkpoint of it is saved, and `train` returns
with "interrupted": True; running the same config again resumes there. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import csv
import dataclasses
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

from wan22_jax.convert.dit import load_dit, save_dit
from wan22_jax.convert.vae import load_vae
from wan22_jax.lora.export import expert_path, export_lora
from wan22_jax.lora.formats import COMFYUI
from wan22_jax.models.dit import WanModel
from wan22_jax.ops import XLA, Kernels, with_kernels
from wan22_jax.models.vae import decode, encode
from wan22_jax.training import lora as lora_mod
from wan22_jax.sharding.rules import make_mesh
from wan22_jax.errors import ConfigError
from wan22_jax.training.cache import CachedDataset, tokenizer_hash
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.data import LatentData
from wan22_jax.training.loader import Loader, held_out_batches
from wan22_jax.training.metrics import MetricsLogger, total_peak_flops, train_flops
from wan22_jax.training.previews import PreviewRenderer, batch_previews, cache_previews, pixel_decoder
from wan22_jax.training.placement import batch_shardings, dotted_specs, put, state_shardings, tree_shardings
from wan22_jax.training.run_config import RunConfig, parse_run_config
from wan22_jax.training.step import Placement, full_params, init_state, make_eval_loss, make_train_step
from wan22_jax.training.text import build_text_encoder, export_trained_t5, joint_params_fn, make_text_fn

EVAL_TIMESTEPS = (100, 500, 900)
COMFYUI_FILE = "lora_comfyui.safetensors"


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


def _vae_functions(vae_path):
    """(encode, decode) of the VAE in `vae_path`: video [B, 3, T, H, W] <-> normalised latents [B, z, F, h, w];
    (None, None) without one."""
    if vae_path is None:
        return None, None
    graphdef, state = nnx.split(load_vae(vae_path))
    return (lambda video: encode(graphdef, state, video)), (lambda latents: decode(graphdef, state, latents))


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


def _batches(data, position: int, batch_size: int, accum: int):
    """The run's batches from data position `position` on: a Loader's read ahead by its Grain threads, the
    mini-world's computed one by one."""
    if isinstance(data, Loader):
        for _, batch in data.iterator(position):
            yield batch
        return
    while True:
        yield data.batch(position, batch_size, accum)
        position += batch_size * accum


def _put_batch(batch, shardings):
    """A batch onto its shardings; on several processes each holds its rows only (Loader) and the global batch is
    assembled from them."""
    if shardings is None:
        return batch
    if jax.process_count() > 1:
        return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), batch,
                            shardings)
    return put(batch, shardings)


def _placement(mesh, state, specs, batch, frozen) -> Placement | None:
    """Shardings of the state, the batches and the frozen params over `mesh` (None: one device)."""
    if mesh is None:
        return None
    return Placement(mesh, state_shardings(jax.eval_shape(lambda: state), specs, mesh), batch_shardings(batch, mesh),
                     None if frozen is None else tree_shardings(frozen, specs, mesh))


def train(config: RunConfig | dict[str, Any], *, kernels: Kernels = XLA) -> dict[str, Any]:
    """Runs (or resumes) a training run; writes out_dir/dit (and out_dir/t5, the trained encoder in the release
    layout, when text.train) once all steps are done.

    Args:
      config: a RunConfig, or its JSON object (parsed strictly: every mistake raises ConfigError naming the
        field).
      kernels: the DiT's ops (`wan22_jax.ops.Kernels`; XLA by default, `Kernels.cpu()` on a CPU for speed);
        `train.attention` other than "xla" replaces its attention.
    Returns:
      {"state", "step", "out_dir", "seconds", "last_loss", "interrupted" (Ctrl-C: checkpoint saved, outputs not
      written), "checkpoint_dir"}.
    """
    cfg = parse_run_config(config)
    out_dir = Path(cfg.out_dir)
    dit_cfg, train_cfg, text_cfg = cfg.dit, cfg.train, cfg.text
    steps, batch_size = cfg.steps, cfg.batch_size
    dtype = jnp.bfloat16 if train_cfg.dtype == "bfloat16" else jnp.float32
    if train_cfg.attention != "xla":
        kernels = dataclasses.replace(kernels, attention=train_cfg.attention)
    mesh = make_mesh(cfg.mesh.spec) if cfg.mesh.spec else None
    # a trained encoder runs inside the loss on token ids; a frozen one's contexts are precomputed
    text_mode = "ids" if text_cfg.train else "context"
    cached = None
    if cfg.data.kind == "cache":  # opened (and its sizes checked) before anything is built or written
        cached = CachedDataset(cfg.data.dir, held_out=cfg.data.held_out)
        if cfg.lora is None:  # a LoRA's base is checked once loaded
            cached.check(z_dim=dit_cfg.in_dim, text_dim=None if text_cfg.train else dit_cfg.text_dim,
                         text_len=dit_cfg.text_len)
        data = Loader(cached, batch_size=batch_size, grad_accum=train_cfg.grad_accum, seed=train_cfg.seed,
                      text=text_mode, read_threads=cfg.data.read_threads, prefetch=cfg.data.read_threads)
    out_dir.mkdir(parents=True, exist_ok=True)  # after the config checks: a mistake leaves no folder behind

    text_encoder = t5_cfg = t5_model = None
    if cached is None or text_cfg.train:
        text_encoder, t5_cfg, t5_model = build_text_encoder(text_cfg, dit_cfg.text_len, out_dir / "tokenizer")
        if t5_cfg.dim != dit_cfg.text_dim:
            raise ConfigError(f"text.t5.dim={t5_cfg.dim} must equal dit.text_dim={dit_cfg.text_dim} (the DiT reads "
                              "the encoder's output)")
    if cached is None:
        text_kw = ({"tokenize": text_encoder.tokenizer} if text_cfg.train
                   else {"encode_text": lambda prompts: text_encoder(prompts)[0]})
        encode_video, decode_video = _vae_functions(cfg.vae_path)
        data = LatentData(cfg.world, encode_video, **text_kw)
        held_out = LatentData(cfg.world, encode_video, split="held_out", seed_offset=1, clips=cfg.eval.batch,
                              **text_kw)
        eval_batch = held_out.batch(0, len(held_out))
        eval_sets = [("all", {k: v[0] for k, v in eval_batch.items()})]
        previews = batch_previews(eval_sets[0][1], held_out.prompts, cfg.eval.samples)
        decode_fn = decode_video or pixel_decoder(cfg.world.pixel_stride)
    else:
        if text_cfg.train and tokenizer_hash(text_encoder.tokenizer) != cached.manifest["tokenizer"]:
            raise ConfigError(f"text.tokenizer_dir {text_cfg.tokenizer_dir}: not the tokenizer the cache "
                              f"{cfg.data.dir} was made with (its token ids would mean other words)")
        held_out = None if not cfg.data.held_out else CachedDataset(cfg.data.dir, held_out=cfg.data.held_out,
                                                                    split="held_out")
        eval_sets = [] if held_out is None else held_out_batches(held_out, text=text_mode, chunk=cfg.eval.batch)
        # without held-out samples the sample videos use training captions
        previews = cache_previews(held_out or cached, text_mode, cfg.eval.samples)
        decode_fn = _vae_functions(cfg.vae_path)[1] if previews else None

    text_fn = None
    lora_cfg = None if cfg.lora is None else cfg.lora.adapter
    model_cfg = dit_cfg  # the trained DiT's sizes (a LoRA's base may differ from the dit section)
    if lora_cfg is not None:
        base_model = with_kernels(load_dit(cfg.lora.base_path, dtype=dtype, param_dtype=jnp.float32), kernels)
        model_cfg = base_model.cfg
        if cached is not None:  # the base's sizes, not the config's dit section, are what the cache must fit
            cached.check(z_dim=base_model.cfg.in_dim, text_dim=base_model.cfg.text_dim,
                         text_len=base_model.cfg.text_len)
        graphdef, base_state = nnx.split(base_model)
        specs = {} if mesh is None else dotted_specs(base_state, "dit", mesh)
        frozen = nnx.to_pure_dict(base_state)
        params = lora_mod.init_lora(frozen, lora_cfg, seed=train_cfg.seed)
        params_fn = lora_mod.lora_params_fn(lora_cfg)
    else:
        model = WanModel(dit_cfg, dtype=dtype, param_dtype=jnp.float32, kernels=kernels,
                         rngs=nnx.Rngs(train_cfg.seed))
        graphdef, state0 = nnx.split(model)
        specs = {} if mesh is None else dotted_specs(state0, "dit", mesh)
        params, frozen, params_fn = nnx.to_pure_dict(state0), None, full_params
        if text_cfg.train:
            t5_graphdef, t5_state = nnx.split(t5_model)
            params = {"dit": params, "t5": nnx.to_pure_dict(t5_state)}
            params_fn, text_fn = joint_params_fn, make_text_fn(t5_graphdef)
            if mesh is not None:
                specs = {**{f"dit.{k}": v for k, v in specs.items()},
                         **dotted_specs(t5_state, "t5", mesh, prefix="t5.")}

    state = init_state(params, train_cfg)
    placement = _placement(mesh, state, specs, data.batch(0, batch_size, train_cfg.grad_accum), frozen)
    if placement is not None:
        state, frozen = put(state, placement.state), put(frozen, placement.frozen)
    ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir is not None else out_dir / "ckpt"
    ckpt = TrainCheckpointer(ckpt_dir, keep=cfg.checkpoint.keep)
    start = 0
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(state)  # onto the template's shardings
        start = int(state["step"])
        tqdm.write(f"resumed from step {start} (checkpoint in {ckpt_dir}): resuming from step {start} of {steps}")
    train_step = make_train_step(graphdef, train_cfg, params_fn, text_fn, placement)
    eval_loss = make_eval_loss(graphdef, train_cfg, params_fn, text_fn, mesh=mesh)
    log = _CsvLog(out_dir / "loss.csv", ["step", "loss", "grad_norm", "lr", "seconds"], start)
    columns = [f"t{t}" for t in EVAL_TIMESTEPS]
    eval_log = _CsvLog(out_dir / "eval.csv", ["step"] + columns, start)
    bucket_log = None if cached is None else _CsvLog(out_dir / "eval_buckets.csv", ["step", "bucket", "samples"]
                                                      + columns, start)
    meta = {"config": cfg.to_dict()}
    renderer = None if not previews else PreviewRenderer(
        graphdef, params_fn, text_fn, previews, decode=decode_fn, steps=cfg.eval.sample_steps,
        guidance=cfg.eval.guidance, shift=train_cfg.shift, mesh=mesh)
    metrics_log = MetricsLogger(out_dir, peak_flops=total_peak_flops("bf16" if dtype == jnp.bfloat16 else "fp32"),
                                resume_step=start, enabled=jax.process_index() == 0)

    def evaluate(step):
        """eval.csv: the held-out loss over all held-out samples; eval_buckets.csv (a cache): per bucket."""
        if not eval_sets:
            return
        per_bucket: dict[str, dict[str, float]] = {}
        for name, batch in eval_sets:
            n = len(batch["latents"])
            acc = per_bucket.setdefault(name, {"samples": 0, **{c: 0.0 for c in columns}})
            acc["samples"] += n
            for t, c in zip(EVAL_TIMESTEPS, columns):
                acc[c] += n * float(eval_loss(state["params"], batch, t / train_cfg.num_train_timesteps, frozen))
        total = sum(a["samples"] for a in per_bucket.values())
        means = {c: sum(a[c] for a in per_bucket.values()) / total for c in columns}
        eval_log.write({"step": step, **{c: f"{v:.6f}" for c, v in means.items()}})
        scalars = {f"eval/{c}": v for c, v in means.items()}
        if bucket_log is not None:
            for name, a in per_bucket.items():
                bucket_log.write({"step": step, "bucket": name, "samples": a["samples"],
                                  **{c: f"{a[c] / a['samples']:.6f}" for c in columns}})
                scalars.update({f"eval/{name}/{c}": a[c] / a["samples"] for c in columns})
        metrics_log.log_scalars(step, scalars)
        if renderer is not None and jax.process_index() == 0:
            renderer.render(state["params"], frozen, step, out_dir)

    bar = tqdm(total=steps, initial=start, desc="training", unit="step", disable=not cfg.progress)
    t0 = time.perf_counter()
    loss = float("nan")
    if start == 0:
        evaluate(0)
    interrupt = _Interrupt(enabled=True)
    interrupted = False
    batches = _batches(data, int(state["data_position"]), batch_size, train_cfg.grad_accum)
    try:
        for step in range(start, steps):
            batch = next(batches)
            shape = np.shape(batch["latents"])
            state, metrics = train_step(state, _put_batch(batch, placement and placement.batch), frozen)
            loss = float(metrics["loss"])
            log.write({"step": step + 1, "loss": f"{loss:.6f}", "grad_norm": f"{float(metrics['grad_norm']):.4f}",
                       "lr": f"{float(metrics['lr']):.3g}", "seconds": f"{time.perf_counter() - t0:.2f}"})
            # the global batch: every process reads batch_size / processes rows of it
            row = metrics_log.log(step + 1, loss=loss, grad_norm=metrics["grad_norm"], lr=metrics["lr"],
                                  samples=batch_size * train_cfg.grad_accum,
                                  flops=train_flops(model_cfg, (shape[0], batch_size, *shape[2:])))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{row['samples_per_s']:.1f}",
                            **({} if row["mfu"] is None else {"mfu": f"{row['mfu']:.1%}"}))
            done = step + 1
            if done % cfg.eval.every == 0 or done == steps:
                evaluate(done)
            stopping = cfg.stop_after is not None and done >= cfg.stop_after
            # a stopped run leaves a checkpoint at its last step, so the same config resumes from there
            if done % cfg.checkpoint.every == 0 or done == steps or interrupt.requested or stopping:
                ckpt.save(state, {**meta, "step": done})
            if interrupt.requested:
                interrupted = True
                break
            if stopping:
                break
    finally:
        interrupt.restore()
        metrics_log.close()
    bar.close()
    ckpt.close()
    seconds = time.perf_counter() - t0
    if not interrupted and (cfg.stop_after is None or int(state["step"]) >= steps):
        _write_result(out_dir, state, model_cfg, cfg.lora, t5_cfg if text_cfg.train else None)
        plot_losses(out_dir)
    return {"state": state, "step": int(state["step"]), "out_dir": out_dir, "seconds": seconds,
            "last_loss": loss, "interrupted": interrupted, "checkpoint_dir": ckpt_dir}


def _write_result(out_dir: Path, state, dit_cfg, lora_run, t5_cfg) -> None:
    """The trained weights (EMA weights if the state keeps an EMA): out_dir/dit (our Orbax DiT format) and, for a
    trained encoder (t5_cfg given), out_dir/t5 (release layout); or, for a LoRA run (lora_run: its
    LoraRunConfig), out_dir/lora.safetensors (ours) and out_dir/lora_comfyui[.<expert>].safetensors."""
    params = state.get("ema", state["params"])
    if t5_cfg is not None:
        export_trained_t5(out_dir / "t5", params["t5"], t5_cfg)
        params = params["dit"]
    if lora_run is not None:
        params = jax.tree.map(np.asarray, params)
        lora_mod.save_lora(out_dir / "lora.safetensors", params, lora_run.adapter)
        comfy = out_dir / COMFYUI_FILE
        if lora_run.expert_name is not None:
            comfy = expert_path(comfy, lora_run.expert_name)
        export_lora(comfy, params, lora_run.adapter, dit_cfg, COMFYUI)
        return
    abstract = nnx.state(nnx.eval_shape(lambda: WanModel(dit_cfg)))
    nnx.replace_by_pure_dict(abstract, jax.tree.map(np.asarray, params))
    save_dit(abstract, dit_cfg, out_dir / "dit")
