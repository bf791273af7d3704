"""Bad requests a user can make, in Python and on the command line: each is refused before any compute with one
exception of its kind whose message names the argument, its value and what is allowed; on the CLI it is one
`error: ...` line, exit code 2, no traceback. Legal but odd values warn instead.

`CASES` (Python) and `CLI_CASES` are the table; `test_table_size` keeps it honest about its size.
"""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from wan22_jax import cli
from wan22_jax.errors import (CheckpointFormatError, ConfigError, InputError, InputFileError,
                              InsufficientMemoryError, UnknownTokenWarning, UnusualInputWarning, WeightMappingError)
from wan22_jax.pipeline import Wan22Pipeline, default_checkpoint, memory, validate_request
from wan22_jax.training.checkpoint import TrainCheckpointer
from wan22_jax.training.loop import train
from wan22_jax.video import Video

FAST = dict(num_frames=5, num_inference_steps=2, progress=False)

# a whole training run in pooled-pixel space, small enough for a subprocess
TINY_RUN = {
    "world": {"height": 32, "width": 32, "frames": 5, "clips": 16, "pixel_stride": 4},
    "vae": None,
    "text": {"vocab_size": 96, "t5": {"vocab_size": 96, "dim": 16, "dim_attn": 16, "dim_ffn": 32, "num_heads": 2,
                                      "num_layers": 1}},
    "dit": {"model_type": "ti2v", "text_len": 24, "in_dim": 3, "out_dim": 3, "dim": 32, "ffn_dim": 64,
            "freq_dim": 16, "text_dim": 16, "num_heads": 2, "num_layers": 1},
    "train": {"lr": 3e-3, "warmup_steps": 2, "total_steps": 8},
    "batch_size": 2, "steps": 8, "checkpoint": {"every": 4, "keep": 2}, "eval": {"every": 4, "batch": 2},
    "progress": False,
}


@pytest.fixture(scope="module")
def world():
    return Wan22Pipeline.from_pretrained(progress=False)


def _copy_world(tmp):
    dst = tmp / "mini_world"
    shutil.copytree(default_checkpoint(), dst)
    return dst


# ---- the Python table: (id, call(pipes, tmp), exception type, regex of the message)
def _call(which="ti2v", **kwargs):
    return lambda p, tmp: p[which](**{"prompt": "a red circle", **FAST, **kwargs})


def _train(**changes):
    def run(p, tmp):
        cfg = json.loads(json.dumps(TINY_RUN))
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                cfg[section][field] = value
            else:
                cfg[section] = value
        cfg["out_dir"] = str(tmp / "run")
        train(cfg)
    return run


def _truncated(name):
    def run(p, tmp):
        folder = _copy_world(tmp)
        f = folder / name
        f.write_text(f.read_text()[: len(f.read_text()) // 2])
        Wan22Pipeline.from_pretrained(folder, progress=False)
    return run


def _no_tokenizer(p, tmp):
    folder = _copy_world(tmp)
    shutil.rmtree(folder / "google")
    Wan22Pipeline.from_pretrained(folder, progress=False)(prompt="a red bar", **FAST)


def _save_into_existing(p, tmp):
    tmp.mkdir(parents=True)
    p["world"].save_pretrained(tmp)


def _lora_file(tmp, d_in=64, extra=None):
    """A ComfyUI-named LoRA on blocks.0.self_attn.q of a width-`d_in` DiT (the tiny presets are 64 wide)."""
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": np.zeros((2, d_in), np.float32),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": np.zeros((64, 2), np.float32), **(extra or {})}
    save_file(tensors, str(tmp / "lora.safetensors"))
    return tmp / "lora.safetensors"


def _not_safetensors(tmp):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "lora.safetensors").write_text("not a LoRA")
    return tmp / "lora.safetensors"


CASES = [
    ("lora_expert_on_one_dit", lambda p, tmp: p["ti2v"].load_lora(_lora_file(tmp), expert="high"), InputError,
     r"expert='high': this pipeline has one DiT \(\['model'\]\), no high/low-noise experts"),
    ("lora_missing_file", lambda p, tmp: p["ti2v"].load_lora(tmp / "none.safetensors"), InputFileError,
     r"none\.safetensors: no such LoRA file"),
    ("lora_not_safetensors", lambda p, tmp: p["t2v"].load_lora(_not_safetensors(tmp)), CheckpointFormatError,
     r"lora\.safetensors: not a readable safetensors file"),
    ("lora_unknown_key", lambda p, tmp: p["ti2v"].load_lora(_lora_file(tmp, extra={
        "diffusion_model.blocks.0.self_attn.q_img.alpha": np.ones((), np.float32)})), WeightMappingError,
     r"1 comfyui LoRA key\(s\) match no parameter of this DiT: \['diffusion_model\.blocks\.0\.self_attn\.q_img"),
    ("lora_shape_mismatch", lambda p, tmp: p["ti2v"].load_lora(_lora_file(tmp, d_in=48)), WeightMappingError,
     r"lora_A\.weight' \(2, 48\) .* do not make a \[64, 64\] update of 'blocks\.0\.self_attn\.q\.weight'"),
    ("guidance_zero", _call(guidance_scale=0), InputError, r"guidance_scale=0: must be a finite number > 0.*"
                                                           r"ignores the prompt"),
    ("guidance_negative", _call(guidance_scale=-2.0), InputError, r"guidance_scale=-2\.0: must be .* > 0"),
    ("guidance_nan", _call(guidance_scale=float("nan")), InputError, r"guidance_scale=nan"),
    ("guidance_text", _call(guidance_scale="high"), InputError, r"guidance_scale='high'"),
    ("guidance_pair_one_expert", _call(guidance_scale=(3.0, 4.0)), InputError,
     r"guidance_scale=\(3\.0, 4\.0\): a \(low_noise, high_noise\) pair needs a two-expert"),
    ("guidance_triple", _call("t2v", guidance_scale=(1.0, 2.0, 3.0)), InputError,
     r"one value or \(low_noise, high_noise\)"),
    ("steps_fractional", _call(num_inference_steps=2.5), InputError,
     r"num_inference_steps=2\.5: must be a whole number >= 1"),
    ("steps_zero", _call(num_inference_steps=0), InputError, r"num_inference_steps=0: must be a whole number >= 1"),
    ("steps_bool", _call(num_inference_steps=True), InputError, r"num_inference_steps=True"),
    ("shift_zero", _call(shift=0), InputError, r"shift=0: must be a finite number > 0"),
    ("shift_negative", _call(shift=-1.5), InputError, r"shift=-1\.5"),
    ("seed_negative", _call(seed=-1), InputError, r"seed=-1: must be an integer in \[0, 2\*\*32\)"),
    ("seed_too_big", _call(seed=2**32), InputError, r"seed=4294967296: .*repeat smaller ones"),
    ("seed_and_key", _call(seed=1, key=jax.random.key(1)), InputError, r"give seed= or key=, not both"),
    ("key_not_a_key", _call(key=5), InputError, r"key=5: give one JAX PRNG key"),
    ("videos_per_prompt_zero", _call(num_videos_per_prompt=0), InputError,
     r"num_videos_per_prompt=0: must be a whole number >= 1"),
    ("videos_per_prompt_fraction", _call(num_videos_per_prompt=1.5), InputError, r"num_videos_per_prompt=1\.5"),
    ("output_type_unknown", _call(output_type="gif"), InputError, r"output_type='gif': use one of 'video', 'np'"),
    ("callback_not_callable", _call(callback_on_step_end="print"), InputError,
     r"callback_on_step_end='print': give a callable \(step, t, latents\)"),
    ("height_fractional", _call(height=64.5, width=64), InputError, r"height=64\.5: must be a whole number"),
    ("width_without_height_image", _call(width=64, image=np.zeros((64, 64, 3), np.uint8)), InputError,
     r"height=None, width=64: give both or neither"),
    ("frames_float", _call(num_frames=5.5), InputError, r"num_frames=5\.5: must be an integer 1 \+ 4k"),
    ("frames_bool", _call(num_frames=True), InputError, r"num_frames=True: must be an integer"),
    ("max_area_tiny", _call(max_area=10, image=np.zeros((64, 64, 3), np.uint8)), InputError,
     r"max_area=10: must be a whole number >= 1024"),
    ("eta_negative", _call(solver="ddim", eta=-0.1), InputError, r"eta=-0\.1: must be a number in \[0, 1\]"),
    ("eta_wrong_solver", _call(eta=0.5), InputError, r"eta=0\.5 only applies to solver='ddim'"),
    ("prompt_not_text", _call(prompt=3), InputError, r"prompt=3: give a string or a non-empty list of strings"),
    ("prompt_empty_list", _call(prompt=[]), InputError, r"prompt=\[\]: give a string"),
    ("prompt_embeds_nan", _call(prompt=None, prompt_embeds=np.full((1, 4, 32), np.nan, np.float32)), InputError,
     r"prompt_embeds holds NaN or Inf"),
    ("dtype_float16", lambda p, tmp: Wan22Pipeline.from_pretrained(dtype="fp16"), InputError,
     r"dtype='fp16' is not a supported dtype: use one of \['bf16', 'bfloat16', 'float32', 'fp32'\].*float16"),
    ("dtype_int8", lambda p, tmp: Wan22Pipeline.from_pretrained(dtype=np.int8), InputError,
     r"dtype=<class 'numpy\.int8'> is not a supported dtype"),
    ("t5_dtype_unknown", lambda p, tmp: Wan22Pipeline.from_pretrained(t5_dtype="fp8"), InputError,
     r"t5_dtype='fp8' is not a supported dtype"),
    ("checkpoint_missing", lambda p, tmp: Wan22Pipeline.from_pretrained(tmp / "nowhere"), InputFileError,
     r"nowhere: checkpoint folder not found"),
    ("config_json_truncated", _truncated("config.json"), CheckpointFormatError,
     r"mini_world/config\.json: the config\.json is not valid JSON \(truncated or corrupt"),
    ("task_json_truncated", _truncated("task.json"), CheckpointFormatError, r"mini_world/task\.json: .*not valid JSON"),
    ("no_tokenizer_folder", _no_tokenizer, InputError,
     r"mini_world has no tokenizer folder \(.*google/umt5-xxl/ .*not found.*\); without one, pass prompt_embeds"),
    ("save_pretrained_existing", _save_into_existing, InputError, r"already exists: save_pretrained writes a new"),
    ("video_fps_zero", lambda p, tmp: Video(np.zeros((1, 8, 8, 3), np.uint8)).save(tmp / "v.mp4", fps=0),
     InputError, r"fps=0: must be a whole number of frames per second"),
    ("train_unknown_field", _train(learning_rate=1e-3), ConfigError, r"unknown training config field.*learning_rate"),
    ("train_steps_text", _train(steps="ten"), ConfigError, r"training config steps='ten': must be a whole number"),
    ("train_lr_text", _train(train__lr="fast"), ConfigError, r"config train: invalid TrainConfig: lr='fast'"),
    ("train_dtype_fp16", _train(train__dtype="fp16"), ConfigError, r"dtype='fp16' is not a supported dtype"),
    ("train_world_not_object", _train(world=5), ConfigError, r"training config 'world' must be an object"),
    ("train_t_range", _train(train__t_range=[0.5]), ConfigError, r"t_range=\(0\.5,\): must be a pair"),
    ("train_remat_number", _train(train__remat=1), ConfigError, r"remat=1: must be true or false"),
]


@pytest.mark.parametrize("fn,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_one_clear_error(ti2v, t2v, world, tmp_path, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn({"ti2v": ti2v, "t2v": t2v, "world": world}, tmp_path / "case")
    assert not (tmp_path / "case" / "run").exists(), "a refused training config left an output folder"


def test_a_request_that_cannot_fit_is_refused_fast(world):
    t0 = time.perf_counter()
    with pytest.warns(UnusualInputWarning, match="16384x16384"), \
            pytest.raises(InsufficientMemoryError, match=r"needs [\d.]+ GiB, [\d.]+ GiB RAM available; try fewer"):
        world(prompt="a red bar", height=16384, width=16384, num_frames=121, progress=False)
    assert time.perf_counter() - t0 < 30


def test_compiled_memory_plan_is_checked(world, monkeypatch):
    """A request that passes the shape-only bound is held to the compiled loop's own memory plan."""
    request = validate_request(world.task, world.dit_config, world.vae_config.z_dim, has_text_encoder=True,
                               prompt="a red bar", **FAST)
    need = world.check_memory(request)  # the larger of the compiled loop's and the compiled decoder's plans
    bound = memory.lower_bound(1, request.latent_shape, 5, 64, 64, True)
    assert need > bound
    free = (bound + need) // 2  # enough for the shape bound, not for the compiled plan
    monkeypatch.setattr(memory, "available_bytes", lambda devices: (free, "RAM"))
    with pytest.raises(InsufficientMemoryError, match=rf"needs {need / 2**30:.1f} GiB"):
        world(prompt="a red bar", **FAST)


# ---- legal but odd: warnings that say so
def test_guidance_at_most_one_with_a_negative_prompt_warns(ti2v):
    with pytest.warns(UnusualInputWarning, match=r"guidance_scale=1 <= 1 with a negative prompt"):
        ti2v(prompt="a red circle", negative_prompt="blurry", guidance_scale=1.0, output_type="latent", **FAST)


def test_untrained_size_warns_and_trained_size_does_not(world):
    with pytest.warns(UnusualInputWarning, match=r"size 32x32 \(WxH\) is not one the mini-world model was trained"
                                                 r" at \(64x64\)"):
        world(prompt="a red bar", height=32, width=32, output_type="latent", **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusualInputWarning)
        world(prompt="a red bar", output_type="latent", **FAST)


def test_unknown_words_warn_with_the_words_and_a_lower_case_hint(world):
    world.text_encoder.clear_cache()
    with pytest.warns(UnknownTokenWarning, match=r"2 word\(s\) the tokenizer does not know.*'A', 'RED'.*"
                                                 r"lower-case: try 'a red bar'"):
        world(prompt="A RED bar", output_type="latent", **FAST)


# ---- the command line: one `error:` line, exit code 2, no traceback
def _cli(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def _bad_image(tmp):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "x.png").write_text("not a png")
    return tmp / "x.png"


def _embeds_file(tmp, suffix):
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"e{suffix}"
    if suffix == ".safetensors":
        save_file({"a": np.zeros((4, 32), np.float32), "b": np.zeros((4, 32), np.float32)}, str(path))
    else:
        path.write_text("x")
    return path


def _train_config(tmp, text):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "c.json").write_text(text)
    return tmp / "c.json"


GEN = ["generate", "--prompt", "a red bar", "--frames", "5", "--steps", "2", "--quiet"]
CLI_CASES = [
    ("lora_missing_cli", lambda tmp: GEN + ["--lora", tmp / "none.safetensors"],
     r"--lora .*none\.safetensors: no such file \(the syntax is PATH\[:STRENGTH\]\[@high\|@low\]\)"),
    ("lora_strength_cli", lambda tmp: GEN + ["--lora", f"{_lora_file(tmp)}:strong"],
     r"strength 'strong' is not a number"),
    ("lora_high_on_one_dit_cli", lambda tmp: GEN + ["--lora", f"{_lora_file(tmp)}@high"],
     r"expert='high': this pipeline has one DiT"),
    ("fps_zero", lambda tmp: GEN + ["--fps", "0"], r"--fps=0: must be a whole number"),
    ("image_missing", lambda tmp: GEN + ["--image", tmp / "nope.png"], r"--image .*nope\.png: no such file"),
    ("image_not_an_image", lambda tmp: GEN + ["--image", _bad_image(tmp)], r"--image .*x\.png: not a readable image"),
    ("size_garbled", lambda tmp: GEN + ["--size", "64by64"], r"--size '64by64': expected WxH"),
    ("no_prompt", lambda tmp: ["generate", "--frames", "5"], r"give --prompt TEXT or --prompt-embeds FILE"),
    ("embeds_missing", lambda tmp: GEN + ["--prompt-embeds", tmp / "e.npy"], r"--prompt-embeds .*e\.npy: no such"),
    ("embeds_suffix", lambda tmp: GEN + ["--prompt-embeds", _embeds_file(tmp, ".txt")], r"expected a \.safetensors"),
    ("embeds_two_tensors", lambda tmp: GEN + ["--prompt-embeds", _embeds_file(tmp, ".safetensors")],
     r"holds 2 tensors \(\['a', 'b'\]\); expected one"),
    ("out_extension", lambda tmp: GEN + ["--out", tmp / "v.txt"], r"--out .*v\.txt: unsupported video extension"),
    ("guidance_zero_cli", lambda tmp: GEN + ["--guide-scale", "0"], r"guidance_scale=0\.0: must be a finite"),
    ("guidance_pair_cli", lambda tmp: GEN + ["--guide-scale", "3", "4"], r"pair needs a two-expert"),
    ("steps_zero_cli", lambda tmp: GEN + ["--steps", "0"], r"--steps 0: must be a whole number >= 1"),
    ("checkpoint_truncated", lambda tmp: GEN + ["--checkpoint", _copy_broken(tmp)], r"config\.json.*not valid JSON"),
    ("too_big", lambda tmp: ["generate", "--prompt", "a red bar", "--size", "16384x16384", "--frames", "121",
                             "--quiet"], r"needs [\d.]+ GiB, [\d.]+ GiB RAM available"),
    ("train_missing_config", lambda tmp: ["train", tmp / "none.json"], r"none\.json: no such training config"),
    ("train_truncated_config", lambda tmp: ["train", _train_config(tmp, '{"steps": 3,')],
     r"c\.json: cannot read the training config"),
    ("train_bad_field", lambda tmp: ["train", _train_config(tmp, json.dumps({**TINY_RUN, "out_dir": str(tmp / "o"),
                                                                            "train": {"lr": "fast"}}))],
     r"c\.json: config train: invalid TrainConfig: lr='fast'"),
]


def _copy_broken(tmp):
    folder = _copy_world(tmp)
    (folder / "config.json").write_text('{"dim": ')
    return folder


@pytest.mark.parametrize("argv,match", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_mistake_is_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "v.mp4"
    args = argv(tmp_path / "case")
    if args[0] == "generate" and "--out" not in args:
        args = args + ["--out", out]
    rc, err = _cli(args, capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and all(line.startswith("warning: ") for line in lines[:-1]), err
    assert re.search(match, err), err
    assert not out.exists()


def test_cli_subprocess_prints_no_traceback(tmp_path):
    """The real `wan22` entry point: a training config mistake and a missing image are one line each."""
    cfg = _train_config(tmp_path, json.dumps({**TINY_RUN, "out_dir": str(tmp_path / "o"), "world": 3}))
    for argv, words in ((["train", cfg], "'world' must be an object"),
                        (GEN + ["--image", tmp_path / "nope.png", "--out", tmp_path / "v.mp4"], "no such file")):
        r = subprocess.run([sys.executable, "-m", "wan22_jax", *map(str, argv)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_table_size():
    assert len({c[0] for c in CASES}) + len({c[0] for c in CLI_CASES}) >= 40


# ---- interrupts
# slow (~30 s: two training subprocesses); tests/training/test_resume.py (slow too) also interrupts
# `wan22 train` with SIGINT and checks the saved checkpoint resumes to the uninterrupted run's state
@pytest.mark.slow
def test_sigint_during_training_saves_a_checkpoint_and_resume_says_so(tmp_path):
    cfg = {**TINY_RUN, "out_dir": str(tmp_path / "run"), "steps": 100000, "checkpoint": {"every": 100000},
           "eval": {"every": 100000}}
    path = _train_config(tmp_path, json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "wan22_jax", "train", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "loss.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "checkpoint saved" in err
    step = TrainCheckpointer(tmp_path / "run" / "ckpt").latest_step()
    assert step is not None and step >= 2
    assert not (tmp_path / "run" / "dit").exists()  # outputs are written only by a finished run
    r = subprocess.run([sys.executable, "-m", "wan22_jax", "train", str(path), "--steps", str(step + 1)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from step {step} of {step + 1}" in r.stdout


def test_interrupted_video_write_leaves_no_file(tmp_path, monkeypatch):
    from wan22_jax import video as video_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(video_mod.mediapy, "write_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Video(np.zeros((1, 8, 8, 3), np.uint8)).save(tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []
