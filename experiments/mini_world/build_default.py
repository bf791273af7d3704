"""Builds the embedded default model (wan22_jax/assets/mini_world/) from scratch: VAE, then DiT, then the
release-layout folder the pipeline loads.

    python experiments/mini_world/build_default.py [--run runs/mini_world] [--out wan22_jax/assets/mini_world]
        [--stage vae|dit|assemble|all] [--vae-steps 1000]

* vae: `train_vae.py` (a Wan2.2-design VAE as an autoencoder), exported as `Wan2.2_VAE.pth` + `vae_config.json`;
* dit: `wan22 train dit_latent.json` on the VAE's latents (resumes from its checkpoints if killed);
* assemble: the folder `Wan22Pipeline.from_pretrained()` reads, laid out like an official release:
  `config.json` + `diffusion_pytorch_model.safetensors` (DiT, EMA weights), `Wan2.2_VAE.pth`,
  `models_t5_umt5-xxl-enc-bf16.pth` + `t5_config.json` (the umT5 trained with the DiT, or the frozen random
  one it was trained with),
  `google/umt5-xxl/` (the sentencepiece tokenizer trained on the world's prompts) and `task.json`.

Every stage skips what already exists, so re-running after a kill continues.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def stage_vae(run: Path, steps: int) -> Path:
    from flax import nnx

    from wan22_jax.config_utils import config_from_dict
    from wan22_jax.models.vae_config import VAEConfig
    from wan22_jax.models.vae import build_vae
    from wan22_jax.state import fill_state, flat_state
    from wan22_jax.training.export import export_vae
    import train_vae

    export = run / "vae_export"
    if (export / "vae_config.json").is_file():
        return export
    # two phases: from scratch, then a fresh warmup + cosine from there (the shapes sharpen in the second)
    if not (run / "vae" / "vae_config.json").is_file():
        train_vae.main(str(run / "vae"), steps, l1=1.0)
    if not (run / "vae_phase2" / "vae_config.json").is_file():
        train_vae.main(str(run / "vae_phase2"), steps // 2, l1=1.0, init=str(run / "vae" / "vae_flat.npz"))
    last = run / "vae_phase2"
    cfg = config_from_dict(VAEConfig, json.loads((last / "vae_config.json").read_text()), source="vae")
    saved = np.load(last / "vae_flat.npz")
    state = fill_state(nnx.state(nnx.eval_shape(lambda: build_vae(cfg))), {k: saved[k] for k in saved.files})
    export_vae(export, flat_state(state), cfg)
    return export


def dit_config(run: Path) -> dict:
    cfg = json.loads((HERE / "dit_latent.json").read_text())
    cfg.update(out_dir=str(run / "dit"), vae=str(run / "vae_export"),
               checkpoint={**cfg["checkpoint"], "dir": str(run / "dit" / "ckpt")})
    return cfg


def stage_dit(run: Path) -> Path:
    from wan22_jax.training.loop import train
    cfg = dit_config(run)
    if not (run / "dit" / "dit" / "wan22.json").is_file():
        out = train(cfg)
        print(f"DiT: {out['step']} steps, {out['seconds']:.0f} s, last loss {out['last_loss']:.4f}")
    return run / "dit" / "dit"


def stage_assemble(run: Path, out: Path) -> Path:
    import jax.numpy as jnp

    from wan22_jax.config_utils import config_from_dict, config_to_dict
    from wan22_jax.convert.dit import load_dit
    from wan22_jax.models.t5 import T5Config, random_t5
    from wan22_jax.state import flat_state
    from wan22_jax.training.export import export_dit, export_t5, export_tokenizer
    from wan22_jax.training.text import TextConfig
    from wan22_jax.training.mini_world_model import MINI_WORLD_TASK
    from flax import nnx

    cfg = dit_config(run)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dit = load_dit(run / "dit" / "dit", dtype=jnp.float32, param_dtype=jnp.float32)
    export_dit(tmp, flat_state(nnx.state(dit)), dit.cfg)
    for f in (run / "vae_export").iterdir():  # Wan2.x_VAE.pth + vae_config.json
        shutil.copy(f, tmp / f.name)
    text = config_from_dict(TextConfig, cfg["text"], source="text")
    if text.train:  # the encoder trained with the DiT (written by the training run in the release layout)
        for f in (run / "dit" / "t5").iterdir():
            shutil.copy(f, tmp / f.name)
    else:
        t5_cfg = config_from_dict(T5Config, text.t5, source="text.t5")
        t5 = random_t5(t5_cfg, dtype=jnp.float32, param_dtype=jnp.float32, seed=text.seed)
        export_t5(tmp, flat_state(nnx.state(t5)), t5_cfg)
    export_tokenizer(tmp, run / "dit" / "tokenizer")
    assert MINI_WORLD_TASK.text_len == dit.cfg.text_len
    (tmp / "task.json").write_text(json.dumps(config_to_dict(MINI_WORLD_TASK), indent=1, ensure_ascii=False))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/mini_world")
    ap.add_argument("--out", default="wan22_jax/assets/mini_world")
    ap.add_argument("--stage", default="all", choices=("vae", "dit", "assemble", "all"))
    ap.add_argument("--vae-steps", type=int, default=1000, help="phase 1; phase 2 runs half as many")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    if args.stage in ("vae", "all"):
        stage_vae(run, args.vae_steps)
    if args.stage in ("dit", "all"):
        stage_dit(run)
    if args.stage in ("assemble", "all"):
        stage_assemble(run, out)


if __name__ == "__main__":
    main()
