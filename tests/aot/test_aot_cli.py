"""`wan22 aot` without the compilers: the command exists, targets parse, a missing extra is one clear line, and
the HLO reader counts collectives per run (loop bodies times their trip counts). Runs in the default suite."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from wan22_jax.aot import hlo
from wan22_jax.aot.compile import oom_line
from wan22_jax.aot.conditioned import CONDITIONED_TASKS, ConditionedPlan, conditioned_stages
from wan22_jax.aot.targets import TARGET_DIR, backend_available, parse_target
from wan22_jax.cli import main
from wan22_jax.errors import ConfigError, InputError
from wan22_jax.models.vae import abstract_vae
from wan22_jax.models.vae import decode as vae_decode
from wan22_jax.models.vae_config import preset as vae_preset
from wan22_jax.models.vae_layers import CausalConv3d, Conv2d
from wan22_jax.ops import Kernels


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["aot", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--target", "--task", "--program", "--mesh", "--attention", "--conv", "--dtype", "--json",
                   "--frames"):
        assert option in out


@pytest.mark.parametrize("name, platform, count", [("h100x8", "cuda", 8), ("rtx4090", "cuda", 1),
                                                   ("a100-80g", "cuda", 1), ("h200x2", "cuda", 2),
                                                   ("v6e-8", "tpu", 8), ("v5e-4", "tpu", 4),
                                                   ("v5p-8", "tpu", 4), ("tpu7x-8", "tpu", 8),
                                                   ("l40s", "cuda", 1), ("l40sx4", "cuda", 4)])
def test_targets_parse(name, platform, count):
    target = parse_target(name)
    assert (target.platform, target.count) == (platform, count)


@pytest.mark.parametrize("name, match", [("h100x", "unknown target 'h100x'"), ("v6e-6", "no v6e topology"),
                                         ("v5p-3", "no v5p topology"), ("b300", "unknown target")])
def test_bad_targets_are_named(name, match):
    with pytest.raises(ConfigError, match=match):
        parse_target(name)


def test_the_48gb_target_holds_what_an_l40s_reports():
    target = parse_target("l40s")
    assert target.memory == 46068 * 2**20  # MiB nvidia-smi reports with ECC on
    assert (TARGET_DIR / target.chip.spec).read_text().count("device_memory_size: 48305799168") == 1


@pytest.mark.parametrize("task, frames, match", [("s2v-14B", "81", "S2V clips are a multiple of 4 frames"),
                                                 ("animate-14B", "80", "Animate clips are 1 \\+ 4k frames")])
def test_conditioned_tasks_check_the_clip_length(task, frames, match):
    task_cfg = CONDITIONED_TASKS[task]
    plan = ConditionedPlan(task_cfg, "tiny", 128, 128, int(frames), jnp.bfloat16, Kernels(), mesh=None)
    with pytest.raises(InputError, match=match):
        conditioned_stages(plan, "dit-step")


def test_conditioned_tasks_compile_only_dit_programs():
    plan = ConditionedPlan(CONDITIONED_TASKS["s2v-14B"], "tiny", 128, 128, 8, jnp.bfloat16, Kernels(), mesh=None)
    with pytest.raises(InputError, match="task s2v-14B compiles dit-step or sample"):
        conditioned_stages(plan, "vae-decode")


@pytest.mark.skipif(backend_available("tpu"), reason="libtpu is installed here: the extra is not missing")
def test_missing_extra_is_one_line(capsys):
    code = main(["aot", "--target", "v6e-8", "--models", "tiny", "--program", "dit-step"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "`aot` extra" in err and "v6e-8" in err


HLO = """HloModule m

%body (p: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %p = (s32[], bf16[4,8]{1,0}) parameter(0)
  %x = bf16[4,8]{1,0} get-tuple-element(%p), index=1
  %ag = bf16[16,8]{1,0} all-gather(%x), replica_groups=[2,4]<=[8], dimensions={0}
  %a2a = bf16[4,8]{1,0} all-to-all(%x), replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  ROOT %t = (s32[], bf16[4,8]{1,0}) tuple(%i, %a2a)
}

%cond (p: (s32[], bf16[4,8])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: bf16[4,8]) -> bf16[4,8] {
  %a = bf16[4,8]{1,0} parameter(0)
  %w = (s32[], bf16[4,8]{1,0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"40"}}
  %ar = f32[1024]{0} all-reduce(%z), replica_groups=[1,8]<=[8], to_apply=%add
  ROOT %r = bf16[4,8]{1,0} get-tuple-element(%w), index=1
}
"""


def test_collectives_count_loop_bodies_per_iteration():
    found = hlo.collectives(HLO, 8)
    assert found["all-gather"].count == 40
    assert found["all-gather"].bytes == pytest.approx(40 * 16 * 8 * 2 * 3 / 4)  # groups of 4: 3/4 of the result
    assert found["all-to-all"].count == 40
    assert found["all-to-all"].bytes == pytest.approx(40 * 4 * 8 * 2 / 2)  # groups of 2
    assert found["all-reduce"].count == 1
    assert found["all-reduce"].bytes == pytest.approx(2 * 4096 * 7 / 8)


def test_attention_kernel_is_read_from_custom_calls():
    assert hlo.attention_kernel('%f = bf16[2] custom-call(%a), custom_call_target="__cudnn$fmhaSoftmax"') == "cudnn"
    assert hlo.attention_kernel('%f = bf16[2] custom-call(%a), custom_call_target="tpu_custom_call", '
                                'backend_config={"name": "splash_mha_fwd"}') == "splash"
    assert hlo.attention_kernel("%d = bf16[2] dot(%a, %b)") == "xla"


def test_tpu_out_of_memory_becomes_one_line():
    message = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
               "Used 40.12G of 15.75G hbm. Exceeded hbm capacity by 24.37G.\n\nTotal hbm usage >= 40.12G:")
    assert oom_line(message, 16 * 2**30) == "needs 40.12G, 15.75G available"
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (80.30G) "
               "exceeds available HBM (15.75G).")
    assert oom_line(message, 16 * 2**30) == "needs 80.30G (HLO temporaries), 15.75G available"


@pytest.mark.parametrize("name", ["tiny2.2", "tiny2.1"])
def test_vae_decode_program_holds_each_convolution_once(name):
    # a TPU compiler lowers every convolution instruction on its own (seconds each): the first chunk must run
    # through the scanned body, not an unrolled copy, and identical residual blocks through one scanned body
    cfg = vae_preset(name)
    graphdef, state = abstract_vae(cfg)

    def convs(frames):
        latent = jax.ShapeDtypeStruct((1, cfg.z_dim, frames, 4, 6), jnp.float32)
        text = jax.jit(lambda s, z: vae_decode(graphdef, s, z)).lower(state, latent).as_text()
        return text.count("stablehlo.convolution")

    decoder = nnx.merge(graphdef, state).decoder
    modules = sum(isinstance(m, (CausalConv3d, Conv2d)) for _, m in nnx.iter_graph(decoder))
    assert convs(1) == convs(5) < modules


def test_dots_convolutions_leave_no_convolution_instruction():
    # `--conv dots` exists for TPU compile time (each convolution instruction is lowered on its own, for seconds):
    # the decode program must then hold matmuls only
    cfg = vae_preset("tiny2.2")
    graphdef, state = abstract_vae(cfg, kernels=Kernels(conv="dots"))
    latent = jax.ShapeDtypeStruct((1, cfg.z_dim, 2, 4, 6), jnp.float32)
    text = jax.jit(lambda s, z: vae_decode(graphdef, s, z)).lower(state, latent).as_text()
    assert "stablehlo.convolution" not in text and "stablehlo.dot_general" in text
