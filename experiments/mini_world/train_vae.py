"""Stage 1 of the mini-world model: a small Wan2.2-design VAE trained as an autoencoder on mini-world clips.

    python experiments/mini_world/train_vae.py OUT_DIR [steps]

Writes OUT_DIR/vae_flat.npz (our flat params, every 25 steps and at the end), OUT_DIR/vae_config.json (with
the measured latent statistics) and OUT_DIR/vae_loss.csv.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wan22_jax.config_utils import config_to_dict
from wan22_jax.convert.mapping import flat_state
from wan22_jax.data.mini_world import MiniWorld
from wan22_jax.training.autoencoder import make_vae_step, with_latent_stats
from wan22_jax.training.mini_world_model import VAE_CONFIG, WORLD_SIZE
from wan22_jax.models.vae_tiling import build_vae


def main(out: str, steps: int = 700, batch: int = 2) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = VAE_CONFIG
    world = MiniWorld(height=WORLD_SIZE[0], width=WORLD_SIZE[1], frames=5, seed=1)
    graphdef, params = nnx.split(build_vae(cfg, rngs=nnx.Rngs(0)))
    step, tx = make_vae_step(graphdef, steps=steps, lr=2e-3)
    opt = tx.init(params)
    t0 = time.time()
    with open(out_dir / "vae_loss.csv", "w") as log:
        log.write("step,mse,seconds\n")
        for i, (_, b) in zip(range(steps), world.batches(batch)):
            params, opt, mse = step(params, opt, jnp.asarray(b["video"]))
            log.write(f"{i},{float(mse):.6f},{time.time() - t0:.1f}\n")
            log.flush()
            if (i + 1) % 25 == 0 or i + 1 == steps:
                np.savez(out_dir / "vae_flat.npz", **{k: np.asarray(v) for k, v in flat_state(params).items()})
    full = with_latent_stats(cfg, (graphdef, params), MiniWorld(height=WORLD_SIZE[0], width=WORLD_SIZE[1],
                                                                 frames=17, seed=2))
    (out_dir / "vae_config.json").write_text(json.dumps(config_to_dict(full), indent=1))
    print(f"done: {steps} steps in {time.time() - t0:.0f} s, last mse {float(mse):.5f}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
