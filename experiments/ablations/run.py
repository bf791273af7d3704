"""Ablations on the trained mini-world model, each read by the detector on the 24 held-out prompts x 2 seeds:
shift, guidance scale, number of steps, and the expert boundary of a two-expert mini model.

    python experiments/ablations/run.py [--checkpoint FOLDER] [--experts-steps 300]
        [--out experiments/ablations/results]

The two-expert model is made the A14B way: the shipped DiT is fine-tuned twice for `--experts-steps` steps,
once on the high-noise side of sigma = 0.6 (t_range (0.6, 1)) and once on the low-noise side (0, 0.6); the
boundary sweep then runs the pair as a `Wan22Pipeline` with two experts (the high-noise expert runs while
t >= boundary x 1000: boundary 0 gives it every step, 1 none). Writes ablations.csv and ablations.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wan22_jax.data.mini_world import MiniWorld, held_out_scenes
from wan22_jax.data.prompt_following import accuracy, generate_rows
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.step import init_state, make_train_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import pyplot, save_figure, write_csv  # noqa: E402

SHIFTS = [1.0, 2.0, 3.0, 5.0, 8.0, 12.0]
GUIDANCE = [1.0, 2.0, 3.0, 4.0, 6.0, 9.0]
STEPS = [2, 4, 6, 10, 20, 40]
BOUNDARIES = [0.0, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0]
EXPERT_SPLIT = 0.6


def measure(pipe, scenes, **call) -> dict:
    rows, _ = generate_rows(pipe, scenes, seeds=(0, 1), progress=False, **call)
    return accuracy(rows)


def two_expert_pipeline(pipe, steps: int, seed: int = 0):
    """(high-noise expert state, low-noise expert state), each fine-tuned from the pipeline's DiT on its side."""
    graphdef, state = pipe.experts["model"]
    h, w = pipe.task.size[1], pipe.task.size[0]
    world = MiniWorld(height=h, width=w, frames=pipe.task.frame_num, seed=11)
    b = world.batch(0, 512)
    lat = np.concatenate([np.asarray(pipe.vae_encode(b["video"][i:i + 64])) for i in range(0, 512, 64)])
    ctx = np.asarray(pipe.encode_prompts(b["prompts"]), np.float32)
    null = np.asarray(pipe.encode_prompts([""]), np.float32)[0]
    out = {}
    for name, rng in (("high_noise_model", (EXPERT_SPLIT, 1.0)), ("low_noise_model", (0.0, EXPERT_SPLIT))):
        cfg = TrainConfig(lr=3e-4, warmup_steps=20, total_steps=steps, shift=pipe.task.sample_shift,
                          t_range=rng, text_dropout=0.1, weight_decay=0.0, seed=seed)
        step = make_train_step(graphdef, cfg)
        st = init_state(nnx.to_pure_dict(state), cfg)
        for i in range(steps):
            idx = (i * 32 + np.arange(32)) % len(lat)
            batch = {"latents": jnp.asarray(lat[idx])[None], "context": jnp.asarray(ctx[idx])[None],
                     "null_context": jnp.asarray(np.broadcast_to(null, ctx[idx].shape))[None]}
            st, _ = step(st, batch)
        new = jax.tree.map(lambda x: x, state)
        nnx.replace_by_pure_dict(new, st["params"])
        out[name] = (graphdef, new)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--experts-steps", type=int, default=300)
    ap.add_argument("--out", default="experiments/ablations/results")
    args = ap.parse_args()
    pipe = Wan22Pipeline.from_pretrained(args.checkpoint)
    scenes = held_out_scenes()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for what, values, key in (("shift", SHIFTS, "shift"), ("guidance", GUIDANCE, "guidance_scale"),
                              ("steps", STEPS, "num_inference_steps")):
        for v in values:
            acc = measure(pipe, scenes, **{key: v})
            rows.append({"ablation": what, "value": v, **{k: f"{a:.3f}" for k, a in acc.items()}})
            print(rows[-1], flush=True)
    experts = two_expert_pipeline(pipe, args.experts_steps)
    for bnd in BOUNDARIES:
        task = dataclasses.replace(pipe.task, two_experts=True, boundary=bnd)
        moe = Wan22Pipeline(task, experts, pipe.dit_config, pipe.vae, pipe.vae_config, pipe.text_encoder,
                            dtype=jnp.float32)
        acc = measure(moe, scenes)
        rows.append({"ablation": "boundary", "value": bnd, **{k: f"{a:.3f}" for k, a in acc.items()}})
        print(rows[-1], flush=True)
    write_csv(out / "ablations.csv", rows)
    plot(rows, out / "ablations.png", pipe.task)
    print(f"took {time.perf_counter() - t0:.0f} s")


def plot(rows, path: Path, task) -> None:
    plt = pyplot()
    import matplotlib.ticker
    defaults = {"shift": task.sample_shift, "guidance": task.guide_scale[0], "steps": task.sample_steps,
                "boundary": None}
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for ax, what in zip(axes, ("shift", "guidance", "steps", "boundary")):
        r = [x for x in rows if x["ablation"] == what]
        xs = [float(x["value"]) for x in r]
        for k in ("colour", "shape", "direction", "all"):
            ax.plot(xs, [float(x[k]) for x in r], "o-", ms=3, label=k)
        if defaults[what] is not None:
            ax.axvline(defaults[what], color="gray", lw=0.8, ls=":")
        if what in ("shift", "steps"):
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(what if what != "boundary" else f"expert boundary (experts split at {EXPERT_SPLIT})")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
