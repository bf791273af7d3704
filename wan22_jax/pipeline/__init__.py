"""The generation pipeline in stages: request.py (checked call arguments) -> plan.py (the static DenoisePlan)
-> denoise.py (the compiled loop) -> decode; pipeline.py holds `Wan22Pipeline`, which runs them."""

from wan22_jax.pipeline.denoise import DenoiseInputs, denoise, run_steps, start_loop
from wan22_jax.pipeline.animate_pipeline import AnimatePipeline
from wan22_jax.pipeline.files import EXPERTS, default_checkpoint
from wan22_jax.pipeline.pipeline import Wan22Pipeline, decode
from wan22_jax.pipeline.plan import DenoisePlan, make_plan
from wan22_jax.pipeline.request import Request, validate_request

__all__ = ["EXPERTS", "AnimatePipeline", "DenoiseInputs", "DenoisePlan", "Request", "Wan22Pipeline", "decode",
           "default_checkpoint", "denoise", "make_plan", "run_steps", "start_loop", "validate_request"]
