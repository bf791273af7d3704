"""Scaling study on the mini-world: DiTs of several sizes trained on the same data budget (same clips, same
number of samples, same schedule), final held-out loss vs training FLOPs, with a fitted power law.

    python experiments/scaling/run.py [--vae runs/mini_world/vae_export] [--steps 600] [--batch 32]
        [--out experiments/scaling/results]

Uses the mini-world VAE (build it with experiments/mini_world/build_default.py --stage vae). Each size is one
`training.loop.train` run (runs/scaling/<name>/; resumed if killed). The loss reported is the mean of the
held-out evaluation at t = 100, 500, 900 after the last step (fixed noise, fixed clips), the number that does
not depend on the sampled timesteps of the last batches. Training FLOPs = 3 x forward FLOPs
(`wan22_jax.flops.dit_forward_flops`, forward + backward) x samples seen.
Writes results.csv, fit.json and loss_vs_flops.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "mini_world"))

# (name, dim, ffn_dim, heads, layers): width and depth grow together, as in the usual scaling ladders
SIZES = [("xs", 32, 64, 2, 2), ("s", 64, 128, 4, 2), ("m", 96, 256, 4, 3), ("l", 128, 384, 4, 4),
         ("xl", 192, 512, 6, 4)]


def run_size(name, dim, ffn, heads, layers, *, vae: str, steps: int, batch: int, root: Path) -> dict:
    from wan22_jax.config_utils import config_from_dict
    from wan22_jax.flops import dit_forward_flops
    from wan22_jax.models.dit import DiTConfig
    from wan22_jax.training.loop import train
    from build_default import dit_config

    cfg = dit_config(Path("runs/mini_world"))
    cfg["dit"] = {**cfg["dit"], "dim": dim, "ffn_dim": ffn, "num_heads": heads, "num_layers": layers}
    cfg["world"] = {**cfg["world"], "clips": 1024}
    cfg["train"] = {**cfg["train"], "total_steps": steps, "warmup_steps": min(50, steps // 10)}
    cfg.update(out_dir=str(root / name), vae=vae, steps=steps, batch_size=batch, progress=False,
               checkpoint={**cfg["checkpoint"], "dir": str(root / name / "ckpt"), "every": max(100, steps // 3)},
               eval={**cfg["eval"], "every": steps})
    out = train(cfg)
    with open(root / name / "eval.csv") as f:
        last = list(csv.DictReader(f))[-1]
    loss = float(np.mean([float(last[k]) for k in ("t100", "t500", "t900")]))
    dit = config_from_dict(DiTConfig, cfg["dit"], source=name)
    fwd = dit_forward_flops(dit, (2, 8, 8))  # the context is zero-padded to text_len and attended in full
    trained = out["state"]["params"]
    trained = trained.get("dit", trained)  # the DiT's parameters (the small text encoder trains alongside)
    params = sum(int(np.prod(v.shape)) for v in __import__("jax").tree.leaves(trained))
    return {"name": name, "dim": dim, "ffn_dim": ffn, "heads": heads, "layers": layers, "params": params,
            "steps": steps, "batch": batch,
            "train_flops": 3 * fwd * steps * batch, "eval_loss": loss, "train_loss_last": out["last_loss"],
            "seconds": round(out["seconds"], 1)}


def fit_power_law(flops, loss) -> dict:
    """loss = a * C^-b by least squares in log-log space."""
    x, y = np.log(np.asarray(flops, float)), np.log(np.asarray(loss, float))
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    return {"a": float(np.exp(intercept)), "exponent": float(-slope), "r2": float(r2)}


def plot(rows, fit, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = np.array([r["train_flops"] for r in rows], float)
    l = np.array([r["eval_loss"] for r in rows], float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(c, l, "o", label="DiT sizes (held-out loss)")
    for r in rows:
        ax.annotate(f"{r['name']} ({r['params'] / 1e6:.2f}M)", (r["train_flops"], r["eval_loss"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    xs = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
    ax.loglog(xs, fit["a"] * xs ** -fit["exponent"], "--",
              label=f"fit: L = {fit['a']:.3g} C^-{fit['exponent']:.3f} (R² {fit['r2']:.2f})")
    ax.set_xlabel("training FLOPs (3 x forward x samples)")
    ax.set_ylabel("held-out flow-matching MSE")
    ax.set_title(f"mini-world scaling, same data budget ({rows[0]['steps']} steps x {rows[0]['batch']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vae", default="runs/mini_world/vae_export")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sizes", default=",".join(s[0] for s in SIZES))
    ap.add_argument("--runs", default="runs/scaling")
    ap.add_argument("--out", default="experiments/scaling/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = args.sizes.split(",")
    rows = []
    for s in SIZES:
        if s[0] in wanted:
            rows.append(run_size(*s, vae=args.vae, steps=args.steps, batch=args.batch, root=Path(args.runs)))
            print(rows[-1], flush=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fit = fit_power_law([r["train_flops"] for r in rows], [r["eval_loss"] for r in rows])
    (out / "fit.json").write_text(json.dumps(fit, indent=1))
    plot(rows, fit, out / "loss_vs_flops.png")
    print(f"power law: loss = {fit['a']:.4g} * C^-{fit['exponent']:.4f} (R^2 {fit['r2']:.3f})")


if __name__ == "__main__":
    main()
