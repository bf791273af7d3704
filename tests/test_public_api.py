"""`from wan22_jax import ...`: the public names, each the object of its home module; importing the package
stays free of torch (an optional dependency, used only by the checkpoint readers and the official comparisons)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import wan22_jax
from wan22_jax.samplers import SAMPLERS

# name -> the module that defines it
HOMES = {
    "Wan22Pipeline": "wan22_jax.pipeline.pipeline",
    "PipelineOutput": "wan22_jax.video",
    "Video": "wan22_jax.video",
    "DiTConfig": "wan22_jax.models.dit",
    "T5Config": "wan22_jax.models.t5",
    "VAEConfig": "wan22_jax.models.vae_config",
    "TaskConfig": "wan22_jax.configs",
    "get_task": "wan22_jax.configs",
    "Sampler": "wan22_jax.samplers.base",
    "FlowUniPC": "wan22_jax.samplers.unipc",
    "FlowDPMSolverPP": "wan22_jax.samplers.dpmpp",
    "FlowDDIM": "wan22_jax.samplers.stochastic",
    "Euler": "wan22_jax.samplers.simple",
    "Heun": "wan22_jax.samplers.simple",
    "RK4": "wan22_jax.samplers.simple",
    "get_sampler": "wan22_jax.samplers.registry",
    "StepCache": "wan22_jax.models.step_cache",
    "read_lora": "wan22_jax.lora.load",
    "LoraWeights": "wan22_jax.lora.load",
    "export_lora": "wan22_jax.lora.export",
    "LoraConfig": "wan22_jax.lora.ours",
}


def test_all_lists_exactly_the_public_names():
    assert sorted(wan22_jax.__all__) == sorted([*HOMES, "__version__"])
    assert len(set(wan22_jax.__all__)) == len(wan22_jax.__all__)


@pytest.mark.parametrize("name", sorted(HOMES))
def test_public_name_is_the_object_of_its_home_module(name):
    home = importlib.import_module(HOMES[name])
    assert getattr(wan22_jax, name) is getattr(home, name)
    assert getattr(wan22_jax, name).__module__ == HOMES[name]


def test_version_is_a_release_string():
    parts = wan22_jax.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts), wan22_jax.__version__


def test_every_sampler_name_resolves_to_an_exported_class():
    exported = {getattr(wan22_jax, n) for n in wan22_jax.__all__ if n != "__version__"}
    assert {cls for cls, _ in SAMPLERS.values()} <= exported


def test_importing_the_package_does_not_import_torch():
    code = ("import sys\n"
            "from wan22_jax import *\n"
            "import wan22_jax.sharding, wan22_jax.state\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])  # this checkout's package first
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"`import wan22_jax` imported torch modules: {out.stdout.strip()}"
