"""The whole path a user takes with their own clips, measured: a folder of captioned mp4 files (two of them bad)
-> `wan22 cache` -> `wan22 train` (killed with SIGKILL, resumed, interrupted with Ctrl-C, resumed to the end) ->
held-out loss per bucket; then a LoRA on the embedded default model, exported in ComfyUI naming and loaded back
into the pipeline.

    python experiments/train_videos/run.py WORK_DIR [--steps 600] [--lora-steps 200]

WORK_DIR gets videos/ (make_folder.py), cache/, full/ (a DiT of the default model's size trained from scratch on
the cache: eval.csv, eval_buckets.csv, metrics.csv, tensorboard/, samples/, loss.png) and lora/. Prints what the
README records.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from wan22_jax.config_utils import config_to_dict
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.pipeline.files import default_checkpoint
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.run_config import base_dit_config

HERE = Path(__file__).parent


def wan22(*args: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
    return subprocess.Popen([sys.executable, "-m", "wan22_jax", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env)


def wait_until(cond, proc: subprocess.Popen, log: Path, what: str, timeout: float = 1800) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise SystemExit(f"run ended before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise SystemExit(f"no {what} in {timeout} s")


def last_step(out: Path) -> int:
    path = out / "metrics.csv"
    rows = path.read_text().strip().splitlines()[1:] if path.is_file() else []
    return max((int(r.split(",")[0]) for r in rows), default=0)


def lines(log: Path, *words: str) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if any(w in ln for w in words)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lora-steps", type=int, default=200)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    subprocess.run([sys.executable, str(HERE / "make_folder.py"), str(work / "videos")], check=True)
    log = work / "cache.log"
    proc = wan22("cache", str(work / "videos"), "--out", str(work / "cache"), "--area", "4096", "--frames", "5",
                 "--fps", "source", "--no-progress", log=log)
    assert proc.wait() == 0, log.read_text()
    print("== wan22 cache\n" + "\n".join(lines(log, "skipped", "encoded")))

    # full training, from scratch, at the default model's size (its frozen text encoder's contexts are cached)
    steps = args.steps
    full = {"out_dir": str(work / "full"), "data": {"kind": "cache", "dir": str(work / "cache"), "held_out": 6},
            "vae": "default", "dit": config_to_dict(base_dit_config(default_checkpoint())),
            "train": {"lr": 1e-3, "warmup_steps": 50, "total_steps": steps, "shift": 3.0, "text_dropout": 0.1,
                      "ema_decay": 0.99, "seed": 0},
            "batch_size": 4, "steps": steps, "checkpoint": {"every": 50, "keep": 2},
            "eval": {"every": 100, "batch": 8, "samples": 2}, "progress": False}
    cfg = work / "full.json"
    cfg.write_text(json.dumps(full, indent=1))
    out, ckpt = work / "full", work / "full" / "ckpt"
    log1 = work / "full.1.log"
    proc = wan22("train", str(cfg), log=log1)
    wait_until(lambda: ckpt.is_dir() and (TrainCheckpointer(ckpt).latest_step() or 0) >= steps // 4, proc, log1,
               "a checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = TrainCheckpointer(ckpt).latest_step()
    print(f"== SIGKILL at step {last_step(out)} (last checkpoint: step {killed})")
    log2 = work / "full.2.log"
    proc = wan22("train", str(cfg), log=log2)
    wait_until(lambda: "resumed from step" in log2.read_text() and last_step(out) >= steps // 2, proc, log2,
               "half the steps")
    proc.send_signal(signal.SIGINT)
    rc = proc.wait()
    print(f"== SIGINT: exit status {rc}\n" + "\n".join(lines(log2, "resumed from", "interrupted")))
    log3 = work / "full.3.log"
    proc = wan22("train", str(cfg), log=log3)
    assert proc.wait() == 0, log3.read_text()[-3000:]
    print("\n".join(lines(log3, "resumed from", "trained to")))
    with open(out / "metrics.csv") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f)]
    print(f"metrics.csv: {len(logged)} rows, steps {logged[0]}..{logged[-1]}, each once: "
          f"{logged == list(range(1, steps + 1))}")
    print("== held-out loss (eval.csv: 6 held-out clips)\n" + (out / "eval.csv").read_text().strip())
    print("== per bucket (eval_buckets.csv)\n" + (out / "eval_buckets.csv").read_text().strip())

    # a LoRA on the embedded default model, on the same cache (made with that model's VAE and text encoder)
    lora = {"out_dir": str(work / "lora"), "data": full["data"], "vae": "default",
            "lora": {"base": "default", "rank": 8, "alpha": 8},
            "train": {"lr": 2e-3, "warmup_steps": 20, "total_steps": args.lora_steps, "shift": 3.0,
                      "text_dropout": 0.1, "seed": 0},
            "batch_size": 4, "steps": args.lora_steps, "checkpoint": {"every": 100},
            "eval": {"every": 50, "batch": 8, "samples": 2}, "progress": False}
    (work / "lora.json").write_text(json.dumps(lora, indent=1))
    log4 = work / "lora.log"
    proc = wan22("train", str(work / "lora.json"), log=log4)
    assert proc.wait() == 0, log4.read_text()[-3000:]
    print("== LoRA on the default model\n" + "\n".join(lines(log4, "trained to")))
    print("eval.csv\n" + (work / "lora" / "eval.csv").read_text().strip())
    print("eval_buckets.csv\n" + (work / "lora" / "eval_buckets.csv").read_text().strip())
    pipe = Wan22Pipeline.from_pretrained().load_lora(work / "lora" / "lora_comfyui.safetensors")
    video = pipe("a red circle moving left on a black background", seed=0)
    print(f"pipe.load_lora(lora_comfyui.safetensors) and a generation: {video.videos[0].frames.shape} frames")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
