"""`wan22 generate --lora` on the default model.

Issue #21's "done when" for LoRAs: a LoRA trained by `wan22 train` on the default model, exported in ComfyUI
naming, loaded by `wan22 generate --lora PATH` changes the CLI's output as trained.

Public entry points only: `wan22 train` writes `lora.safetensors` (our format), `wan22_jax.lora.export_lora_file`
rewrites it in ComfyUI naming, `wan22 generate --lora` reads that. The expectation is built without the LoRA code:
the trained factors are read from the file with safetensors and merged with numpy (W + alpha / rank * A @ B),
the video generated with those weights is written through the same mp4 writer, and both files are decoded.

`--lora-unmerged` (applied inside every step) writes the merged video; `--lora-schedule` of zeros writes the
video without the LoRA; bad schedules are one `error:` line before the model loads.
"""

import dataclasses
import json

import numpy as np
import pytest
from safetensors import safe_open

from wan22_jax.cli import main as cli
from wan22_jax.errors import InputError
from wan22_jax.generate_cli import parse_schedule
from wan22_jax.lora import export_lora_file
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.pipeline.files import default_checkpoint
from wan22_jax.state import fill_state, flat_state
from wan22_jax.video import read_video

from .conftest import write

PROMPT = "a red bar moving left on a black background"
STEPS = 4


def _merged_by_hand(pipe, lora_file):
    """The pipeline with the trained adapters merged in numpy: W + alpha / rank * A @ B per kernel."""
    with safe_open(str(lora_file), framework="numpy") as f:
        meta = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    graphdef, state = pipe.experts["model"]
    flat = dict(flat_state(state))
    scale = meta["alpha"] / meta["rank"]
    changed = 0
    for key in tensors:
        if key.endswith(".lora_a"):
            path = key.removesuffix(".lora_a")
            delta = scale * np.matmul(tensors[key], tensors[path + ".lora_b"])
            flat[path] = np.asarray(flat[path]) + delta.astype(np.float32)
            changed += int(np.any(delta != 0))
    assert changed >= 4  # every default target learnt something
    return dataclasses.replace(pipe, experts={"model": (graphdef, fill_state(state, flat))})


@pytest.mark.slow  # a training compile, four steps on the default model, three generations (~1 min on 2 cores)
def test_a_lora_trained_by_wan22_train_changes_the_cli_output_as_trained(tmp_path):
    base = default_checkpoint()
    pipe = Wan22Pipeline.from_pretrained(progress=False)
    dit = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(pipe.dit_config).items()}
    config = {
        "out_dir": str(tmp_path / "run"), "steps": 4, "batch_size": 4, "progress": False,
        "world": {"height": 64, "width": 64, "frames": 5, "clips": 16, "seed": 0},
        "vae": str(base), "text": {"vocab_size": 96, "tokenizer": "word"}, "dit": dit,
        "train": {"lr": 3e-2, "warmup_steps": 1, "total_steps": 4, "shift": 3.0, "weight_decay": 0.0},
        "lora": {"base": str(base), "rank": 4, "alpha": 4.0},
        "checkpoint": {"every": 100}, "eval": {"every": 100, "batch": 2},
    }
    (tmp_path / "lora.json").write_text(json.dumps(config))
    assert cli(["train", str(tmp_path / "lora.json")]) == 0
    trained = tmp_path / "run" / "lora.safetensors"
    comfy = export_lora_file(trained, tmp_path / "style_comfyui.safetensors", pipe.dit_config, "comfyui")
    with safe_open(str(comfy), framework="numpy") as f:
        assert all(k.startswith("diffusion_model.blocks.") for k in f.keys())  # ComfyUI naming

    args = ["generate", "--prompt", PROMPT, "--steps", str(STEPS), "--seed", "0", "--quiet"]
    assert cli([*args, "--lora", str(comfy), "--out", str(tmp_path / "cli.mp4")]) == 0
    got = read_video(tmp_path / "cli.mp4").astype(np.float64)

    call = dict(prompt=PROMPT, num_inference_steps=STEPS, seed=0, progress=False)
    expected = _merged_by_hand(pipe, trained)(**call).videos[0].save(tmp_path / "expected.mp4")
    plain = pipe(**call).videos[0].save(tmp_path / "plain.mp4")
    want, without = (read_video(p).astype(np.float64) for p in (expected, plain))
    as_trained = float(np.mean(np.abs(got - want)))
    vs_plain = float(np.mean(np.abs(got - without)))
    # same weights up to float32 rounding, the same encoder: the decoded files agree to codec noise, far below
    # the change the LoRA makes
    assert as_trained <= 0.5, as_trained
    assert vs_plain >= 2.0 and vs_plain >= 10 * as_trained, (vs_plain, as_trained)


def _style_file(path, dim, layers, rank=4, seed=0):
    """A ComfyUI-named LoRA on every block's self-attention q / o and ffn.0 of a DiT of width `dim`."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):
        for m, (out_dim, in_dim) in (("self_attn.q", (dim, dim)), ("self_attn.o", (dim, dim))):
            tensors[f"diffusion_model.blocks.{i}.{m}.lora_down.weight"] = (
                rng.standard_normal((rank, in_dim)) / np.sqrt(in_dim)).astype(np.float32)
            tensors[f"diffusion_model.blocks.{i}.{m}.lora_up.weight"] = (
                0.5 * rng.standard_normal((out_dim, rank))).astype(np.float32)
    return write(path, tensors)


def _generate(tmp_path, name, *extra):
    out = tmp_path / f"{name}.mp4"
    assert cli(["generate", "--prompt", PROMPT, "--steps", str(STEPS), "--seed", "0", "--quiet", "--out", str(out),
                *map(str, extra)]) == 0
    return read_video(out).astype(np.float64)


@pytest.mark.slow  # four generations of the default model through the CLI (two loops compiled)
def test_unmerged_lora_gives_the_merged_video_and_a_zero_schedule_the_plain_one(tmp_path):
    pipe = Wan22Pipeline.from_pretrained(progress=False)
    lora = str(_style_file(tmp_path / "style.safetensors", pipe.dit_config.dim, pipe.dit_config.num_layers))
    merged = _generate(tmp_path, "merged", "--lora", f"{lora}:0.8")
    unmerged = _generate(tmp_path, "unmerged", "--lora", f"{lora}:0.8", "--lora-unmerged")
    plain = _generate(tmp_path, "plain")
    off = _generate(tmp_path, "off", "--lora", f"{lora}:0.8", "--lora-unmerged", "--lora-schedule",
                    ",".join(["0"] * STEPS))
    change = float(np.mean(np.abs(merged - plain)))
    same = float(np.mean(np.abs(unmerged - merged)))
    zero = float(np.mean(np.abs(off - plain)))
    # merged and unmerged differ by float32 rounding only; a zero strength adds nothing (s * (x @ A) @ B = 0):
    # both are codec noise at most, far below the change the LoRA makes
    assert same <= 0.5 and zero <= 0.5, (same, zero)
    assert change >= 2.0 and change >= 10 * max(same, zero), (change, same, zero)


def test_bad_lora_schedules_are_one_error_before_loading(tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before the options were checked")

    monkeypatch.setattr(Wan22Pipeline, "from_pretrained", no_loading)
    lora = str(write(tmp_path / "a.safetensors", {"x": np.zeros(1, np.float32)}))
    base = ["generate", "--prompt", "x", "--lora", lora, "--out", str(tmp_path / "v.mp4")]
    cases = [
        (["--lora-schedule", "1,0"], "--lora-schedule needs --lora-unmerged"),
        (["--lora-unmerged", "--steps", "3", "--lora-schedule", "1,x,0"], "'x' is not a number"),
        (["--lora-unmerged", "--steps", "3", "--lora-schedule", "1,,0"], "'' is not a number"),
        (["--lora-unmerged", "--steps", "2", "--lora-schedule", "1,nan"], "'nan' is not a finite number"),
        (["--lora-unmerged", "--steps", "3", "--lora-schedule", "1,0"],
         "--lora-schedule: 2 strengths for a generation of 3 steps"),
        # the default model's 20 steps, read from its task.json
        (["--lora-unmerged", "--lora-schedule", "1,0,1"], "--lora-schedule: 3 strengths for a generation of 20 "
                                                          "steps"),
        (["--lora-unmerged", "--sampler-preset", "lightning-4step", "--lora-schedule", "1,0"],
         "2 strengths for a generation of 4 steps"),
        (["--lora-unmerged", "--weights", "int8"], "--lora-unmerged with --weights int8"),
    ]
    for extra, message in cases:
        assert cli([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (extra, err)
    assert cli(["generate", "--prompt", "x", "--lora-unmerged"]) == 2
    assert "--lora-unmerged: give the LoRA(s) with --lora PATH" in capsys.readouterr().err
    np.testing.assert_array_equal(parse_schedule("1, 0.5,0"), [1.0, 0.5, 0.0])
    with pytest.raises(InputError, match=r"--lora-schedule '1;0': '1;0' is not a number"):
        parse_schedule("1;0")
