"""The `wan22` command: verify exit codes and saved outputs, convert, generate on the tiny random preset."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from refcases import REFERENCE_DIR
from wan22_jax.cli import main
from wan22_jax.video import read_video


def wan22(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "wan22_jax", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


def wan22_here(capsys, *args):
    """`wan22 ARGS` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_verify_pass_saves_outputs_and_fail_exit_code(tmp_path, capsys):
    case = REFERENCE_DIR / "sched_unipc_s4"
    assert case.is_dir(), f"reference case {case} missing (set WAN22_REFERENCE_DIR)"
    code, out, err = wan22_here(capsys, "verify", case, "--save-outputs", tmp_path / "ours")
    assert code == 0, out + err
    assert "sched_unipc_s4: PASS" in out and "final: err" in out
    ours = load_file(tmp_path / "ours" / "sched_unipc_s4" / "outputs.safetensors")
    assert set(ours) == set(load_file(case / "outputs.safetensors"))
    # the same case with a perturbed reference output must FAIL with exit code 1
    bad = tmp_path / "bad"
    shutil.copytree(case, bad)
    out = load_file(bad / "outputs.safetensors")
    out["final"] = out["final"] + 1e-3 * np.abs(out["final"]).max()
    (bad / "outputs.safetensors").chmod(0o644)
    save_file(out, str(bad / "outputs.safetensors"))
    code, out, _ = wan22_here(capsys, "verify", bad)
    assert code == 1 and "bad/final" in out and "FAIL" in out


def test_verify_usage_and_unknown_component(tmp_path, capsys):
    code, _, err = wan22_here(capsys, "verify", tmp_path)
    assert code == 2 and "not a reference case" in err
    case = tmp_path / "weird"
    case.mkdir()
    (case / "case.json").write_text(json.dumps({"component": "flux_dit", "tolerance": {"max_abs_over_max_ref": 1}}))
    save_file({"x": np.zeros(1, np.float32)}, str(case / "inputs.safetensors"))
    save_file({"y": np.zeros(1, np.float32)}, str(case / "outputs.safetensors"))
    code, _, err = wan22_here(capsys, "verify", case)
    assert code == 2 and "unknown component 'flux_dit'" in err


def test_generate_tiny_random_writes_a_playable_mp4(tmp_path):
    r = wan22("generate", "--preset", "tiny-random", "--prompt", "a red circle", "--frames", "9", "--steps", "3",
              "--out", tmp_path / "v.mp4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in r.stdout and "peak memory" in r.stdout
    assert "compiling" in r.stderr and "denoising" in r.stderr and "decoding (VAE)" in r.stderr  # status lines
    assert read_video(tmp_path / "v.mp4").shape == (9, 64, 64, 3)


def test_generate_bad_frames_is_one_clear_error(tmp_path):
    r = wan22("generate", "--preset", "tiny-random", "--prompt", "x", "--frames", "8", "--out", tmp_path / "v.mp4")
    assert r.returncode == 2 and "num_frames=8" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_convert_refuses_existing_destination_and_empty_source(tmp_path, capsys):
    (tmp_path / "dst").mkdir()
    code, _, err = wan22_here(capsys, "convert", tmp_path, tmp_path / "dst")
    assert code == 2 and "exists" in err
    code, _, err = wan22_here(capsys, "convert", tmp_path / "dst", tmp_path / "new")
    assert code == 1 and "no convertible component" in err and not (tmp_path / "new").exists()


# slow (11 s, a second tiny generation): --prompt-embeds files are read by one shared reader (cli_files) that the
# S2V / Animate CLI tests use in the default suite; the API's prompt_embeds path is in tests/pipeline
@pytest.mark.slow
def test_generate_from_prompt_embeds_quietly(tmp_path):
    np.save(tmp_path / "e.npy", np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32))
    r = wan22("generate", "--preset", "tiny-random", "--prompt-embeds", tmp_path / "e.npy", "--frames", "5",
              "--steps", "2", "--quiet", "--out", tmp_path / "v.mp4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.strip() == "" and "wrote" in r.stdout  # --quiet: no bars, no status lines (shown without it:
    # test_generate_tiny_random_writes_a_playable_mp4)
