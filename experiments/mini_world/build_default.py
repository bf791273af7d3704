"""Builds the embedded default model (wan22_jax/assets/mini_world/) from files: VAE, the mini-world as mp4 files
with English and Japanese captions, the tokenizer, the latent cache, the DiT and its text encoder, then the
release-layout folder the pipeline loads.

    python experiments/mini_world/build_default.py [--run runs/mini_world] [--out wan22_jax/assets/mini_world]
        [--stage vae|files|tokenizer|cache|dit|assemble|all] [--vae-steps 1000] [--vae-from FOLDER]

* vae: `train_vae.py` (a Wan2.2-design VAE as an autoencoder), exported as `Wan2.2_VAE.pth` + `vae_config.json`;
  or, with --vae-from, the VAE of an existing release folder (the VAE does not depend on the captions: the
  bilingual rebuild reused the one of the English-only model with --vae-from wan22_jax/assets/mini_world);
* files: `write_files.py`: 2,048 training clips and 64 held-out-combination clips as mp4, each captioned in
  English and Japanese in a JSONL manifest;
* tokenizer: a sentencepiece unigram model whose user-defined symbols are the world's words in both languages
  (each word one token; tokenizer_training.py), as transformers' T5 tokenizer files;
* cache: `wan22 cache` of both manifests with that VAE, token ids only (the encoder trains with the DiT);
* dit: `wan22 train dit_wan22_train.json` on the cache (data.kind "cache"; resumes from its checkpoints if
  killed). The shipped model was trained by `train_cached.py dit_cached.json`, a driver written before
  `wan22 train` read caches; both run the same Loader and step (the same losses, checked on the first steps);
  the driver also reports the loss on the held-out-combination clips;
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
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def stage_vae(run: Path, steps: int) -> Path:
    import train_vae
    from flax import nnx

    from wan22_jax.config_utils import config_from_dict
    from wan22_jax.models.vae import build_vae
    from wan22_jax.models.vae_config import VAEConfig
    from wan22_jax.state import fill_state, flat_state
    from wan22_jax.training.export import export_vae

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


def stage_vae_from(run: Path, folder: Path) -> Path:
    export = run / "vae_export"
    export.mkdir(parents=True, exist_ok=True)
    for name in ("Wan2.2_VAE.pth", "vae_config.json"):
        shutil.copy(folder / name, export / name)
    return export


def stage_files(run: Path) -> Path:
    from wan22_jax.data.mini_world_files import write_split
    for split, n in (("train", 2048), ("held_out", 64)):
        if not (run / "files" / f"{split}.jsonl").is_file():
            r = write_split(run / "files", split, n)
            print(f"files {split}: {n} clips, detector right on {r['detector_ok']} of {r['checked']} decoded")
    return run / "files"


def stage_tokenizer(run: Path) -> Path:
    from wan22_jax.data.mini_world import LANGUAGES, prompt_corpus, vocabulary
    from wan22_jax.models.tokenizer_training import train_tokenizer
    folder = run / "tokenizer"
    if not (folder / "spiece.model").is_file():
        train_tokenizer(prompt_corpus(LANGUAGES) * 4, folder, vocab_size=96, words=vocabulary())
    return folder


def stage_cache(run: Path) -> Path:
    for split in ("train", "held_out"):  # `wan22 cache` resumes an interrupted cache by itself
        subprocess.run([sys.executable, "-m", "wan22_jax", "cache", str(run / "files" / f"{split}.jsonl"),
                        "--out", str(run / "cache" / split), "--vae", str(run / "vae_export"),
                        "--tokenizer", str(run / "tokenizer"), "--no-text-encoder", "--text-len", "48",
                        "--frames", "5", "--fps", "source", "--area", str(64 * 64), "--patch", "2", "--no-images",
                        "--no-progress"], check=True)
    return run / "cache"


def dit_config(run: Path) -> dict:
    cfg = json.loads((HERE / "dit_wan22_train.json").read_text())
    cfg.update(out_dir=str(run / "dit"), data={**cfg["data"], "dir": str(run / "cache" / "train")},
               text={**cfg["text"], "tokenizer_dir": str(run / "tokenizer")},
               checkpoint={**cfg["checkpoint"], "dir": str(run / "dit" / "ckpt")})
    return cfg


def stage_dit(run: Path) -> Path:
    from wan22_jax.training.loop import train
    cfg = dit_config(run)
    if not (run / "dit" / "dit" / "wan22.json").is_file():
        out = train(cfg)
        print(f"DiT: {out['step']} steps, {out['seconds']:.0f} s, last loss {out['last_loss']:.4f}")
    return run / "dit" / "dit"


def stage_assemble(run: Path, out: Path, trained: Path | None = None) -> Path:
    """The release folder `out` from the run's VAE and tokenizer and the DiT + encoder in `trained` (the
    training run's out_dir, or a checkpoint exported by `train_cached.py --export`)."""
    import jax.numpy as jnp
    from flax import nnx

    from wan22_jax.config_utils import config_to_dict
    from wan22_jax.convert.dit import load_dit
    from wan22_jax.state import flat_state
    from wan22_jax.training.export import export_dit, export_tokenizer
    from wan22_jax.training.mini_world_model import MINI_WORLD_TASK

    trained = run / "dit" if trained is None else trained
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dit = load_dit(trained / "dit", dtype=jnp.float32, param_dtype=jnp.float32)
    export_dit(tmp, flat_state(nnx.state(dit)), dit.cfg)
    for f in (run / "vae_export").iterdir():  # Wan2.x_VAE.pth + vae_config.json
        shutil.copy(f, tmp / f.name)
    for f in (trained / "t5").iterdir():  # the encoder trained with the DiT (release layout)
        shutil.copy(f, tmp / f.name)
    export_tokenizer(tmp, run / "tokenizer")
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
    ap.add_argument("--stage", default="all", choices=("vae", "files", "tokenizer", "cache", "dit", "assemble", "all"))
    ap.add_argument("--vae-steps", type=int, default=1000, help="phase 1; phase 2 runs half as many")
    ap.add_argument("--vae-from", help="take the VAE of this release folder instead of training one")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    if args.stage in ("vae", "all"):
        if args.vae_from:
            stage_vae_from(run, Path(args.vae_from))
        else:
            stage_vae(run, args.vae_steps)
    for name, stage in (("files", stage_files), ("tokenizer", stage_tokenizer), ("cache", stage_cache),
                        ("dit", stage_dit)):
        if args.stage in (name, "all"):
            stage(run)
    if args.stage in ("assemble", "all"):
        stage_assemble(run, out)


if __name__ == "__main__":
    main()
