"""Tiny models compiled for a real NVIDIA target and a real TPU topology (needs the `aot` extra: run in its own
environment with JAX_PLATFORMS=cpu, `python -m pytest -m aot tests/aot`): the attention kernel that was asked for
is the one compiled, sequence parallelism shows as all-to-alls, and an over-budget program is reported as not
fitting (TPU: the compiler's own out-of-memory verdict; GPU: the plan's peak against the card)."""

import json

import pytest

from wan22_jax.aot.targets import AotError, make_devices, parse_target
from wan22_jax.cli import main

pytestmark = pytest.mark.aot

def _need(platform):
    try:
        make_devices(parse_target("v5e-1" if platform == "tpu" else "h100"))
    except AotError as e:  # the extra is missing (or libtpu is held by another process)
        pytest.skip(f"jax.experimental.topologies cannot make a {platform} target here: {e}")


def _run(tmp_path, *argv):
    out = tmp_path / "report.json"
    code = main(["aot", "--models", "tiny", "--size", "256x128", "--frames", "9", "--steps", "2", *argv,
                 "--json", str(out)])
    return code, json.loads(out.read_text())


def test_cudnn_runs_in_shard_map_on_an_h100_mesh(tmp_path):
    _need("cuda")
    code, doc = _run(tmp_path, "--target", "h100x8", "--task", "t2v-A14B", "--program", "sample",
                     "--mesh", "fsdp=4,seq=2", "--attention", "cudnn")
    assert code == 0 and doc["fits"]
    (stage,) = doc["stages"]
    assert stage["attention"] == "cudnn"
    assert any(t.startswith("__cudnn$fmha") for t in stage["custom_calls"])
    assert stage["collectives"]["all-to-all"]["count"] > 0  # Ulysses: tokens <-> heads
    assert stage["peak"] > 0 and stage["roofline_s"]["bound"] > 0


def test_splash_compiles_as_a_mosaic_kernel_for_a_tpu(tmp_path):
    _need("tpu")
    code, doc = _run(tmp_path, "--target", "v5e-4", "--task", "ti2v-5B", "--program", "dit-step",
                     "--mesh", "fsdp=2,seq=2", "--attention", "splash")
    assert code == 0
    (stage,) = doc["stages"]
    assert stage["attention"] == "splash"  # not Pallas' interpreter: the host is a CPU
    assert "tpu_custom_call" in stage["custom_calls"]
    assert stage["collectives"]["all-to-all"]["count"] > 0


def test_tpu_out_of_memory_is_reported_as_not_fitting(tmp_path, capsys):
    _need("tpu")
    # a tiny VAE decoding a 4096 x 4096 x 81 video: its fp32 output alone is 16 GiB, more than a v5e chip
    code, doc = _run(tmp_path, "--target", "v5e-1", "--task", "t2v-A14B", "--program", "vae-decode",
                     "--size", "4096x4096", "--frames", "81")
    assert code == 1 and not doc["fits"]
    (stage,) = doc["stages"]
    assert stage["oom"].startswith("needs ") and "available" in stage["oom"]
    assert "DOES NOT FIT: needs" in capsys.readouterr().out


def test_gpu_peak_over_the_card_is_reported_as_not_fitting(tmp_path):
    _need("cuda")
    code, doc = _run(tmp_path, "--target", "rtx4090", "--task", "t2v-A14B", "--program", "vae-decode",
                     "--size", "4096x4096", "--frames", "81")
    assert code == 1 and not doc["fits"]
    (stage,) = doc["stages"]
    assert stage["peak"] > stage["memory"]


def test_int8_weights_shrink_the_compiled_arguments(tmp_path):
    _need("cuda")
    args = ("--target", "rtx4090", "--task", "ti2v-5B", "--program", "sample")
    code, bf16 = _run(tmp_path, *args)
    code8, int8 = _run(tmp_path, *args, "--weights", "int8")
    assert code == 0 and code8 == 0 and int8["weights"] == "int8" and bf16["weights"] is None
    # the DiT's block Linears at 1 byte instead of 2 (plus fp32 scales); the inputs are the same
    assert int8["stages"][0]["argument"] < bf16["stages"][0]["argument"]


def test_train_step_compiles_sharded_with_its_state_donated(tmp_path):
    _need("cuda")
    code, doc = _run(tmp_path, "--target", "h100x8", "--task", "ti2v-5B", "--program", "train-step",
                     "--mesh", "fsdp=4,seq=2", "--attention", "cudnn", "--remat", "full", "--moment-dtype", "bf16")
    assert code == 0 and doc["fits"]
    (stage,) = doc["stages"]
    assert stage["stage"] == "train-step" and "full fine-tune" in stage["note"] and "moments bfloat16" in stage["note"]
    assert "__cudnn$fmhaSoftmaxBackward" in stage["custom_calls"]  # the flash kernel's own backward, in shard_map
    assert stage["alias"] > 0  # the state is donated: the new state reuses its buffers
    assert stage["collectives"]["all-to-all"]["count"] > 0


def test_lora_train_step_compiles_on_one_gpu(tmp_path):
    _need("cuda")
    code, doc = _run(tmp_path, "--target", "h100", "--task", "ti2v-5B", "--program", "lora-train-step",
                     "--attention", "cudnn", "--lora-rank", "2")
    assert code == 0 and doc["fits"]
    (stage,) = doc["stages"]
    assert stage["stage"] == "lora-train-step" and "LoRA rank 2" in stage["note"]
    assert stage["alias"] > 0 and not stage["collectives"]


def test_train_step_of_an_image_latent_dit_is_refused_in_one_line(tmp_path, capsys):
    _need("cuda")
    code = main(["aot", "--models", "tiny", "--size", "256x128", "--frames", "9", "--target", "h100",
                 "--task", "i2v-A14B", "--program", "train-step"])
    assert code == 2
    assert "training compiles for DiTs without image-latent channels" in capsys.readouterr().err


@pytest.mark.parametrize("task, frames", [("s2v-14B", "8"), ("animate-14B", "9")])
def test_conditioned_dit_step_compiles_sharded_with_cudnn(tmp_path, task, frames):
    _need("cuda")
    out = tmp_path / "report.json"
    code = main(["aot", "--models", "tiny", "--size", "128x128", "--frames", frames, "--target", "h100x2",
                 "--task", task, "--program", "dit-step", "--mesh", "fsdp=1,seq=2", "--attention", "cudnn",
                 "--json", str(out)])
    doc = json.loads(out.read_text())
    assert code == 0 and doc["fits"]
    (stage,) = doc["stages"]
    assert stage["attention"] == "cudnn" and stage["flops"] > 0
    assert stage["collectives"]["all-to-all"]["count"] > 0  # Ulysses over the video + extra tokens


def test_a_48gb_card_fits_a_program_a_24gb_card_does_not(tmp_path):
    _need("cuda")
    # a tiny VAE decoding 3584 x 3584 x 81: its fp32 video and temporaries (about 33 GiB) need more than a 24 GB
    # card, less than a 48 GB one
    runs = {}
    for target in ("rtx4090", "l40s"):
        code, doc = _run(tmp_path, "--target", target, "--task", "t2v-A14B", "--program", "vae-decode",
                         "--size", "3584x3584", "--frames", "81")
        runs[target] = (code, doc["stages"][0]["peak"])
    assert runs["rtx4090"][0] == 1 and runs["l40s"][0] == 0
    assert abs(runs["rtx4090"][1] - runs["l40s"][1]) < 2**20  # the same plan (up to the targets' alignment)
