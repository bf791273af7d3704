"""wan22_jax: Wan2.2 (T2V-A14B, I2V-A14B, TI2V-5B) in JAX/Flax NNX, numerically equal to the official code.

    from wan22_jax import Wan22Pipeline
    pipe = Wan22Pipeline.from_pretrained("path/to/Wan2.2-TI2V-5B")
    video = pipe(prompt="a red ball rolls left").videos[0]

The names below are the public API; everything else is reached through its module (`wan22_jax.sharding`,
`wan22_jax.convert.dit`, ...).
"""

from wan22_jax.configs import TaskConfig, get_task
from wan22_jax.lora.export import export_lora
from wan22_jax.lora.load import LoraWeights, read_lora
from wan22_jax.lora.ours import LoraConfig
from wan22_jax.models.dit import DiTConfig
from wan22_jax.models.step_cache import StepCache
from wan22_jax.models.t5 import T5Config
from wan22_jax.models.vae_config import VAEConfig
from wan22_jax.pipeline import Wan22Pipeline
from wan22_jax.samplers import RK4, Euler, FlowDDIM, FlowDPMSolverPP, FlowUniPC, Heun, Sampler, get_sampler
from wan22_jax.video import PipelineOutput, Video

__version__ = "0.1.0"

__all__ = [
    "Wan22Pipeline", "PipelineOutput", "Video",
    "DiTConfig", "T5Config", "VAEConfig", "TaskConfig", "get_task",
    "Sampler", "FlowUniPC", "FlowDPMSolverPP", "FlowDDIM", "Euler", "Heun", "RK4", "get_sampler",
    "StepCache",
    "read_lora", "LoraWeights", "export_lora", "LoraConfig",
    "__version__",
]
