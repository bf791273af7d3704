"""Error vs number of model evaluations (NFE) of every deterministic sampler, on two velocity fields.

Problems:
* `oracle`: the reference cases' analytic velocity v(x, t) = (x - x0) / (t / 1000) + 0.1 sin(x) on random data.
  Its flow ends exactly at x0, but not smoothly (x - x0 ~ sigma log sigma), so near sigma = 0 it is not a smooth
  ODE and the last step dominates.
* `linear`: the probability-flow ODE of Gaussian data (tests/samplers/problems.py), smooth, closed-form solution.

For each sampler and step count the error is max|x - ref| / max|ref| against a 200-step reference solution
(`--ref-sampler`, RK4 by default), and, in the CSV, also against the exact end point (x0 for the oracle, the
closed form for the linear problem). Runs in float64 with the "exact" timestep mode, so the curves show the
discretisation error alone (not float32 rounding or the official integer truncation of t).

    python experiments/samplers/run.py            # writes results/error_vs_nfe.{csv,png}
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from wan22_jax.samplers import get_sampler, make_schedule, sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from samplers.problems import GaussianFlow  # noqa: E402

SAMPLERS = ["euler", "heun", "rk4", "dpm++", "unipc"]
STEPS = [4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50]


def problems(seed: int, shape: tuple[int, ...]):
    """name -> (velocity_fn, x_T, exact end point)."""
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.standard_normal(shape))
    x_t = jnp.asarray(rng.standard_normal(shape))

    def oracle(x, t, i):
        return (x - x0) / (t / 1000.0) + 0.1 * jnp.sin(x)

    flow = GaussianFlow(mu=0.5 * rng.standard_normal(shape), s=0.2 + 0.5 * rng.random(shape))
    return {"oracle": (oracle, x_t, lambda s0: x0), "linear": (flow.velocity, x_t, lambda s0: flow.solution(x_t, s0))}


def rel_err(x, ref) -> float:
    return float(jnp.max(jnp.abs(x - ref)) / jnp.max(jnp.abs(ref)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    p.add_argument("--shift", type=float, nargs="+", default=[5.0, 1.0], help="one plot row per shift")
    p.add_argument("--spacing", default="linear")
    p.add_argument("--steps", type=int, nargs="+", default=STEPS)
    p.add_argument("--ref-steps", type=int, default=200)
    p.add_argument("--ref-sampler", default="rk4")
    p.add_argument("--samplers", nargs="+", default=SAMPLERS)
    p.add_argument("--shape", type=int, nargs="+", default=[4, 2, 16, 16])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rows = []
    for shift in args.shift:
        def schedule(n):
            return make_schedule(n, shift=shift, spacing=args.spacing, timestep_mode="exact")

        for pname, (vel, x_t, exact_of) in problems(args.seed, tuple(args.shape)).items():
            ref_sched = schedule(args.ref_steps)
            ref = sample(get_sampler(args.ref_sampler), vel, x_t, ref_sched)
            exact = exact_of(float(ref_sched.sigmas64[0]))
            print(f"{pname}, shift {shift:g}: {args.ref_sampler}@{args.ref_steps} reference, "
                  f"error vs exact {rel_err(ref, exact):.3e}")
            for name in args.samplers:
                sampler = get_sampler(name)
                errs = []
                for n in args.steps:
                    sched = schedule(n)
                    x = sample(sampler, vel, x_t, sched)
                    errs.append(rel_err(x, ref))
                    rows.append({"problem": pname, "shift": shift, "sampler": name, "steps": n,
                                 "nfe": sampler.nfe(n), "err_vs_ref": errs[-1],
                                 "err_vs_exact": rel_err(x, exact_of(float(sched.sigmas64[0])))})
                print(f"  {name:6s} " + " ".join(f"{e:.1e}" for e in errs))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "error_vs_nfe.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "error_vs_nfe.png", args)
    print(f"wrote {out / 'error_vs_nfe.csv'} and {out / 'error_vs_nfe.png'}")
    return 0


def plot(rows, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["problem"] for r in rows))
    shifts = list(dict.fromkeys(r["shift"] for r in rows))
    fig, axes = plt.subplots(len(shifts), len(names), figsize=(5 * len(names), 3.6 * len(shifts)), dpi=60,
                             squeeze=False)
    for ax, (shift, pname) in zip(axes.ravel(), [(s, n) for s in shifts for n in names]):
        for name in dict.fromkeys(r["sampler"] for r in rows):
            sel = [r for r in rows if r["problem"] == pname and r["sampler"] == name and r["shift"] == shift]
            ax.loglog([r["nfe"] for r in sel], [r["err_vs_ref"] for r in sel], "o-", ms=3, label=name)
        ax.set_title(f"{pname} (shift {shift:g}, {args.spacing} spacing)")
        ax.set_xlabel("model evaluations (NFE)")
        ax.set_ylabel(f"rel. error vs {args.ref_sampler}@{args.ref_steps}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
