"""The denoising stage: progress is reported from the host between compiled step calls (in order, and the result
is the progress-free one bit for bit), and the compiled loop holds no platform-bound host callback, so it lowers
for a GPU target on a CPU host. Unmerged LoRAs in the loop: equal to merged ones, switchable per step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from wan22_jax.errors import InputError
from wan22_jax.pipeline import EXPERTS, make_plan, run_steps, start_loop, validate_request
from wan22_jax.samplers import loop
from wan22_jax.samplers.loop import step_rows

CALL = dict(prompt="a cat", num_frames=5, num_inference_steps=4, output_type="latent")


def _loop_args(pipe, **call):
    request = validate_request(pipe.task, pipe.dit_config, pipe.vae_config.z_dim, has_text_encoder=True,
                               **{**CALL, **call})
    plan = make_plan(request, pipe.task)
    inputs, _ = pipe.inputs(request)
    names = EXPERTS if pipe.task.two_experts else ("model",)
    graphdef, states = pipe.experts[names[0]][0], tuple(pipe.experts[n][1] for n in names)
    _, carry, kvs = start_loop(graphdef, plan, states, inputs)
    return graphdef, plan, (states, kvs, inputs, carry, step_rows(request.tables, jnp.float32), None)


def test_progress_is_reported_per_step_and_changes_nothing(t2v):
    calls = []
    with_progress = t2v(progress=lambda done, total: calls.append((done, total)), return_trajectory=True, **CALL)
    silent = t2v(progress=False, return_trajectory=True, **CALL)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    np.testing.assert_array_equal(with_progress.latents, silent.latents)
    for k in ("samples", "velocities"):
        np.testing.assert_array_equal(with_progress.trajectory[k], silent.trajectory[k])
    assert not hasattr(loop, "set_progress")  # no module-level hook left


@pytest.mark.parametrize("platforms", [("cpu",), ("cuda",)])
def test_the_loop_lowers_with_no_host_callback(t2v, platforms):
    # the pipeline's default kernels are XLA's: the program has no custom call at all, for any target
    graphdef, plan, args = _loop_args(t2v, step_cache=None)
    traced = run_steps.trace(graphdef, plan, *args)
    text = traced.lower(lowering_platforms=platforms).as_text()
    assert "stablehlo.while" in text  # the scanned steps are in the program
    assert "callback" not in text, sorted(set(re.findall(r"custom_call @(\w+)", text)))
    assert re.findall(r"custom_call @(\w+)", text) == []


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="only a CPU-only host lacks the cuda backend")
def test_a_tiny_loop_with_a_python_callback_would_not_lower_for_cuda():
    # why progress is not a callback inside the program: on this CPU host, lowering one for cuda fails
    def f(x):
        def body(c, i):
            jax.debug.callback(lambda i: None, i)
            return c + 1.0, None
        return jax.lax.scan(body, x, jnp.arange(3))[0]

    with pytest.raises(ValueError, match="lowering platform cuda"):
        jax.jit(f).trace(jnp.float32(0)).lower(lowering_platforms=("cuda",))


# ------------------------------------------------------------------------------------------- unmerged LoRAs
TOL = 1e-5  # the DiT parity tolerance (fp32, relative to the largest value)


def _lora_file(path, dim, seed=0, modules=("blocks.0.self_attn.q", "blocks.1.ffn.0"), rank=2, extra=None):
    """A ComfyUI-named LoRA on `modules` (Linears of a width-`dim` DiT), plus `extra` tensors as given."""
    rng = np.random.default_rng(seed)
    tensors = dict(extra or {})
    for m in modules:
        d_out = 2 * dim if m.endswith("ffn.0") else dim
        tensors[f"diffusion_model.{m}.lora_down.weight"] = rng.standard_normal((rank, dim)).astype(np.float32)
        tensors[f"diffusion_model.{m}.lora_up.weight"] = 0.2 * rng.standard_normal((d_out, rank)).astype(np.float32)
        tensors[f"diffusion_model.{m}.alpha"] = np.asarray(1.0, np.float32)
    save_file(tensors, str(path))
    return path


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.slow  # three loop compiles (~20 s on 2 cores); tests/lora/test_lora_unmerged.py is the fast check
def test_unmerged_lora_in_the_loop_equals_merged(t2v, tmp_path):
    """Unmerged at strength s == merged at s (a text-path Linear and a full-size bias difference included); a
    schedule of ones == the constant; zeros == no LoRA; each expert its own LoRA."""
    dim = t2v.dit_config.dim
    bias = {"diffusion_model.blocks.1.self_attn.o.diff_b": np.linspace(-.5, .5, dim, dtype=np.float32)}
    path = _lora_file(tmp_path / "a.safetensors", dim, modules=("blocks.0.self_attn.q", "blocks.1.ffn.0",
                                                                "blocks.0.cross_attn.k"), extra=bias)
    low_path = _lora_file(tmp_path / "b.safetensors", dim, seed=1, modules=("blocks.1.self_attn.v",))
    base = t2v(**CALL).latents
    merged = t2v.load_lora(path, strength=0.7).load_lora(low_path, strength=1.5, expert="low")
    unmerged = t2v.load_lora(path, strength=0.7, merge=False).load_lora(low_path, strength=1.5, expert="low",
                                                                        merge=False)
    want = merged(**CALL).latents
    assert _rel(want, base) > 1e-2  # the LoRAs matter
    assert unmerged.experts[EXPERTS[0]][1] is t2v.experts[EXPERTS[0]][1]  # base weights shared, untouched
    assert _rel(unmerged(**CALL).latents, want) <= TOL
    ones = t2v.load_lora(path, strength=[1.0] * 4, merge=False)(**CALL).latents
    np.testing.assert_array_equal(ones, t2v.load_lora(path, merge=False)(**CALL).latents)
    np.testing.assert_array_equal(ones, t2v.load_lora(path, strength=lambda i: 1, merge=False)(**CALL).latents)
    zeros = t2v.load_lora(path, strength=np.zeros(4), merge=False)(**CALL).latents
    assert _rel(zeros, base) <= TOL


@pytest.mark.slow  # two loop compiles
def test_a_per_step_schedule_switches_the_lora_between_steps(t2v, tmp_path):
    """On for steps 0-1 and off for 2-3 == two steps with the merged weights, then two with the base weights."""
    path = _lora_file(tmp_path / "a.safetensors", t2v.dit_config.dim)
    merged = t2v.load_lora(path)
    graphdef, plan, (states, kvs, inputs, carry, rows, key) = _loop_args(t2v)
    merged_states = tuple(merged.experts[n][1] for n in EXPERTS)
    head = {k: v[:2] for k, v in rows.items()}
    tail = {k: v[2:] for k, v in rows.items()}
    carry, _ = run_steps(graphdef, plan, merged_states, kvs, inputs, carry, head, key)
    carry, _ = run_steps(graphdef, plan, states, kvs, inputs, carry, tail, key)
    switched = t2v.load_lora(path, strength=[1.0, 1.0, 0.0, 0.0], merge=False)(**CALL).latents
    assert _rel(switched, carry.state.x) <= TOL
    assert _rel(switched, merged(**CALL).latents) > 1e-3


def test_unmerged_lora_refusals(t2v, tmp_path):
    path = _lora_file(tmp_path / "a.safetensors", t2v.dit_config.dim)
    with pytest.raises(InputError, match=r"3 per-step strengths for a generation of 4 steps"):
        t2v.load_lora(path, strength=[1.0, 0.0, 1.0], merge=False)(**CALL)
    with pytest.raises(InputError, match=r"strength function returned nan at step 0"):
        t2v.load_lora(path, strength=lambda i: float("nan"), merge=False)(**CALL)
    with pytest.raises(InputError, match=r"a per-step schedule needs merge=False"):
        t2v.load_lora(path, strength=[1.0] * 4)
    with pytest.raises(InputError, match=r"non-empty 1-D sequence of finite numbers"):
        t2v.load_lora(path, strength=[[1.0]], merge=False)
    unmerged = t2v.load_lora(path, merge=False)
    with pytest.raises(InputError, match=r"quantized: this pipeline applies unmerged LoRAs"):
        unmerged.quantized("int8")
    with pytest.raises(InputError, match=r"save_pretrained: this pipeline applies unmerged LoRAs"):
        unmerged.save_pretrained(tmp_path / "out")
