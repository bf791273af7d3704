"""4-step distillation of the mini-world model, and quality vs steps for the student and the undistilled teacher.

    python experiments/fewstep/distil.py [--pairs-per-scene 8] [--train-steps 1200] [--rank 32] [--seeds 4]
        [--out experiments/fewstep/results] [--lora-dir runs/fewstep]

Method (trajectory distillation onto fixed timesteps, "reflow" style): the teacher is the default model with its
own sampler (UniPC, 50 steps, guidance 4, shift 3). For noise eps and a training prompt it gives the ODE solution
x0 = teacher(eps, prompt). The student is the same DiT with a LoRA, sampled with the `lightning-4step` preset
(Euler, shift 5, no guidance: sigmas 1, 0.9375, 0.8333, 0.625). At each of those sigmas the student sees the
point of the straight line x_sigma = (1 - sigma) x0 + sigma eps and regresses its slope eps - x0: a student that
fits exactly walks that line with Euler and lands on the teacher's 50-step video in 4 steps, guidance included
(one model call per step instead of two). Only training prompts (no held-out combination) and noise from
another generator than the evaluation seeds are used.

The LoRA is written in our format and in ComfyUI naming (`--lora-dir`), so that

    wan22 generate --prompt "..." --sampler-preset lightning-4step --lora runs/fewstep/distil_comfyui.safetensors

runs the student. Evaluation: every held-out scene and as many training scenes (`evaluate.py`'s choice),
`--seeds` seeds each, through `Wan22Pipeline`: the detector's accuracy and the PSNR of the decoded video against
the teacher's 50-step video from the same noise, for the student at 1, 2, 4, 8 steps and the teacher at the same
step counts without distillation (its own sampler, and the student's sampler without the LoRA).
Writes fewstep.csv (a row per configuration and split), distil_loss.csv, fewstep.png and model.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wan22_jax.data.mini_world import held_out_scenes, train_scenes
from wan22_jax.data.prompt_following import accuracy, detect_rows
from wan22_jax.lora import LoraConfig, export_lora
from wan22_jax.lora.ours import save_adapters
from wan22_jax.pipeline import Wan22Pipeline, validate_request
from wan22_jax.pipeline.files import default_checkpoint
from wan22_jax.training.lora import apply_lora, init_lora

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import pyplot, save_figure, write_csv  # noqa: E402

STUDENT = "lightning-4step"
TEACHER_STEPS = 50
STEP_COUNTS = (1, 2, 4, 8)
TARGETS = ("blocks.*.self_attn.[qkvo]", "blocks.*.cross_attn.[qkvo]", "blocks.*.ffn.0", "blocks.*.ffn.2")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def student_sigmas(pipe) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas [4], model timesteps [4]) at which the student preset evaluates the DiT."""
    r = validate_request(pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=True, prompt="a",
                         solver=STUDENT)
    t = np.asarray(r.tables["t"], np.float32).reshape(-1)
    return t / pipe.task.num_train_timesteps, t


def teacher_pairs(pipe, scenes, per_scene: int, batch: int = 120):
    """(context [N, L, D], eps [N, ...], x0 [N, ...]): the teacher's 50-step latents from fresh noise."""
    shape = validate_request(pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=True,
                             prompt="a").latent_shape
    rng = np.random.default_rng(12345)  # not the evaluation's jax seeds
    prompts = [s.prompt for s in scenes] * per_scene
    eps = rng.standard_normal((len(prompts), *shape)).astype(np.float32)
    x0 = []
    for i in range(0, len(prompts), batch):
        out = pipe(prompt=prompts[i:i + batch], latents=eps[i:i + batch], num_inference_steps=TEACHER_STEPS,
                   output_type="latent", progress=False)
        x0.append(out.latents)
    context = np.concatenate([np.asarray(pipe.encode_prompts(prompts[i:i + batch]), np.float32)
                              for i in range(0, len(prompts), batch)])
    return context, eps, np.concatenate(x0)


def distil(pipe, context, eps, x0, sigmas, t, *, rank: int, steps: int, batch: int, lr: float, log):
    """Trains the LoRA; returns (adapters, config)."""
    graphdef, state = pipe.experts["model"]
    base = nnx.to_pure_dict(state)
    cfg = LoraConfig(rank=rank, alpha=float(rank), targets=TARGETS)
    lora = init_lora(base, cfg, seed=0)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps, lr * 0.05)
    opt = optax.adam(sched)
    opt_state = opt.init(lora)
    sig, tt = jnp.asarray(sigmas), jnp.asarray(t)

    def loss_fn(lora, ctx, e, x, k):
        s = sig[k][:, None, None, None, None]
        xt = (1 - s) * x + s * e
        model = nnx.merge(graphdef, apply_lora(base, lora, cfg))
        v = model(xt, tt[k], context=ctx)
        return jnp.mean((v - (e - x)) ** 2)

    @jax.jit
    def step(lora, opt_state, ctx, e, x, k):
        loss, grads = jax.value_and_grad(loss_fn)(lora, ctx, e, x, k)
        updates, opt_state = opt.update(grads, opt_state, lora)
        return optax.apply_updates(lora, updates), opt_state, loss

    rng = np.random.default_rng(0)
    n = len(eps)
    t0 = time.perf_counter()
    for i in range(steps):
        idx = rng.integers(0, n, batch)
        k = rng.integers(0, len(sigmas), batch)
        lora, opt_state, loss = step(lora, opt_state, context[idx], eps[idx], x0[idx], k)
        if i % 50 == 0 or i == steps - 1:
            log.append({"step": i, "loss": round(float(loss), 5), "seconds": round(time.perf_counter() - t0, 1)})
            print(log[-1], flush=True)
    return lora, cfg


def evaluate(pipe, scenes, seeds, call, batch: int = 24):
    """Decoded videos [N, 3, F, H, W] and detector rows for every scene x seed."""
    rows, videos = [], []
    for seed in seeds:
        for i in range(0, len(scenes), batch):
            chunk = scenes[i:i + batch]
            out = pipe(prompt=[s.prompt for s in chunk], seed=seed, progress=False, **call)
            rows += detect_rows([v.frames for v in out.videos], chunk, seed=seed)
            videos.append(out.video)
    return rows, np.concatenate(videos)


def model_note(out: Path) -> None:
    """Which default model was measured: the git commit of its folder and the DiT file's hash."""
    folder = default_checkpoint()
    commit = subprocess.run(["git", "log", "-1", "--format=%H %cs %s", "--", str(folder)], capture_output=True,
                            text=True, cwd=folder).stdout.strip()
    digest = hashlib.sha256((folder / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:16]
    where = folder.relative_to(folder.parents[2])  # wan22_jax/assets/mini_world
    (out / "model.txt").write_text(f"default model: {where}\nassets commit: {commit}\n"
                                   f"diffusion_pytorch_model.safetensors sha256[:16]: {digest}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs-per-scene", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default="experiments/fewstep/results")
    ap.add_argument("--lora-dir", default="runs/fewstep")
    args = ap.parse_args()
    out, lora_dir = Path(args.out), Path(args.lora_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora_dir.mkdir(parents=True, exist_ok=True)
    model_note(out)
    teacher = Wan22Pipeline.from_pretrained(progress=False)
    sigmas, t = student_sigmas(teacher)
    print("student sigmas", sigmas, "timesteps", t, flush=True)

    t0 = time.perf_counter()
    context, eps, x0 = teacher_pairs(teacher, train_scenes(), args.pairs_per_scene)
    print(f"{len(eps)} teacher pairs in {time.perf_counter() - t0:.0f} s", flush=True)
    log = []
    lora, cfg = distil(teacher, context, eps, x0, sigmas, t, rank=args.rank, steps=args.train_steps,
                       batch=args.batch, lr=args.lr, log=log)
    ours = save_adapters(lora_dir / "distil.safetensors", lora, cfg)
    export_lora(lora_dir / "distil_comfyui.safetensors", lora, cfg, teacher.dit_config, "comfyui")
    student = teacher.load_lora(ours)

    held = held_out_scenes()
    rng = np.random.default_rng(0)  # evaluate.py's choice of training scenes
    train = [train_scenes()[i] for i in rng.choice(len(train_scenes()), len(held), replace=False)]
    seeds = range(args.seeds)
    configs = [("teacher", "unipc, guidance 4, shift 3", teacher, {"num_inference_steps": TEACHER_STEPS})]
    configs += [("teacher", "unipc, guidance 4, shift 3", teacher, {"num_inference_steps": n})
                for n in STEP_COUNTS]
    configs += [("teacher", f"{STUDENT} (euler, shift 5, no guidance)", teacher,
                 {"solver": STUDENT, "num_inference_steps": n}) for n in STEP_COUNTS]
    configs += [("student", f"{STUDENT} (euler, shift 5, no guidance)", student,
                 {"solver": STUDENT, "num_inference_steps": n}) for n in STEP_COUNTS]
    results, refs = [], {}
    for model, sampler, pipe, call in configs:
        for split, scenes in (("held_out", held), ("train", train)):
            t1 = time.perf_counter()
            rows, video = evaluate(pipe, scenes, seeds, call)
            if split not in refs:
                refs[split] = video  # the first configuration is the 50-step teacher
            acc = accuracy(rows)
            results.append({"model": model, "sampler": sampler, "steps": call["num_inference_steps"],
                            "split": split, "videos": len(rows),
                            "psnr_vs_teacher50_db": round(psnr(video, refs[split]), 2),
                            **{f"acc_{k}": round(v, 3) for k, v in acc.items()},
                            "seconds": round(time.perf_counter() - t1, 1)})
            print(results[-1], flush=True)
    for name, table in (("fewstep.csv", results), ("distil_loss.csv", log)):
        write_csv(out / name, table)
    plot(results, out / "fewstep.png")


def plot(rows, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    series = [("student", "lightning", "o-", "student (4-step LoRA), euler shift 5, no CFG"),
              ("teacher", "lightning", "s--", "teacher, euler shift 5, no CFG"),
              ("teacher", "unipc", "^:", "teacher, unipc, CFG 4, shift 3")]
    for ax, (split, metric, label) in zip(axes, [("held_out", "acc_all", "detector accuracy (all three), held-out"),
                                                 ("train", "acc_all", "detector accuracy (all three), training"),
                                                 ("held_out", "psnr_vs_teacher50_db", "PSNR vs teacher 50 steps, "
                                                  "held-out (dB)")]):
        for model, sampler, style, name in series:
            sel = [r for r in rows if r["model"] == model and r["sampler"].startswith(sampler) and r["split"] == split
                   and r["steps"] in STEP_COUNTS]
            ax.plot([r["steps"] for r in sel], [r[metric] for r in sel], style, label=name)
        ref = [r for r in rows if r["steps"] == TEACHER_STEPS and r["split"] == split][0]
        if metric == "acc_all":
            ax.axhline(ref[metric], color="gray", lw=0.8, label="teacher, 50 steps")
        ax.set_xscale("log", base=2)
        ax.set_xticks(STEP_COUNTS, [str(s) for s in STEP_COUNTS])
        ax.set_xlabel("sampling steps")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
