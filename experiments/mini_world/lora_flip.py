"""LoRA on the trained mini-world DiT: teach "moving left" to mean moving right, base weights frozen.

    python experiments/mini_world/lora_flip.py CONFIG.json [steps]

Fine-tuning data: mini-world clips that move right, captioned "moving left". Afterwards, for "moving left"
prompts the detector should read "right" with the adapter (scale 1) and "left" without it (scale 0), while
other directions stay as they were. Writes lora_flip.csv, strips_lora_flip.png and lora_flip.safetensors.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wan22_jax.data.detector import detect
from wan22_jax.data.mini_world import MiniWorld, Scene, all_scenes, to_uint8_frames
from wan22_jax.training import lora as L
from wan22_jax.training.config import TrainConfig
from wan22_jax.training.step import init_state, make_train_step
from wan22_jax.training.sampling import TrainedModel

sys.path.insert(0, str(Path(__file__).parent))
from evaluate import strip  # noqa: E402 (the sibling script)

OUT = Path(__file__).parent


def main(config_path: str, steps: int = 150, batch: int = 16) -> None:
    model = TrainedModel(json.loads(Path(config_path).read_text()))
    base = jax.tree.map(np.asarray, model.params)
    before = jax.tree.map(np.array, base)  # a copy, to show the base never moves
    w = model.world_cfg
    world = MiniWorld(height=w.height, width=w.width, frames=w.frames, split="all", seed=77)
    clips = [c for c in (world.clip(i) for i in range(1200)) if c.scene.direction == "right"][:256]
    lat = np.stack([c.video for c in clips])  # pixel-space run: latents are the pixels (pixel_stride 1)
    prompts = [c.prompt.replace("moving right", "moving left") for c in clips]
    ctx = np.asarray(model.text_encoder(sorted(set(prompts)))[0])
    ctx_of = dict(zip(sorted(set(prompts)), ctx))
    context = np.stack([ctx_of[p] for p in prompts])

    cfg = L.LoraConfig(rank=4, alpha=4.0, targets=("blocks.*.cross_attn.q", "blocks.*.cross_attn.o",
                                                    "blocks.*.self_attn.q", "blocks.*.self_attn.k",
                                                    "blocks.*.self_attn.v", "blocks.*.self_attn.o"))
    tcfg = TrainConfig(lr=3e-3, warmup_steps=10, total_steps=steps, shift=model.train_cfg.shift, weight_decay=0.0)
    step = make_train_step(model.graphdef, tcfg, L.lora_params_fn(cfg))
    state = init_state(L.init_lora(base, cfg), tcfg)
    t0 = time.perf_counter()
    for i in range(steps):
        idx = (i * batch + np.arange(batch)) % len(clips)
        state, m = step(state, {"latents": jnp.asarray(lat[idx])[None], "context": jnp.asarray(context[idx])[None]},
                        base)
    train_s = time.perf_counter() - t0
    lora = state["params"]
    L.save_lora(OUT / "lora_flip.safetensors", lora, cfg)

    test = [s for s in all_scenes() if s.background == "black" and s.direction in ("left", "up")]
    rows, strips = [], []
    for scale in (0.0, 1.0):
        params = L.apply_lora(base, lora, cfg, scale)
        videos = model.generate([s.prompt for s in test], seed=1, params=params)
        strips += list(videos[:4])
        for s, v in zip(test, videos):
            rows.append({"scale": scale, "prompt": s.prompt, "detected_direction": detect(to_uint8_frames(v)).direction})
    with open(OUT / "lora_flip.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    strip(strips).save(OUT / "strips_lora_flip.png")
    for scale in (0.0, 1.0):
        for d in ("left", "up"):
            r = [x for x in rows if x["scale"] == scale and f"moving {d}" in x["prompt"]]
            got = {k: sum(x["detected_direction"] == k for x in r) for k in ("left", "right", "up", "down")}
            print(f"scale {scale}: prompts 'moving {d}' ({len(r)}): detected {got}")
    print(f"LoRA training: {steps} steps in {train_s:.0f} s; base unchanged: "
          f"{all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(base)))}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
