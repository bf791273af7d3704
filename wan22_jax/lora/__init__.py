"""LoRAs on the Wan DiT: the community's files (diffusers/PEFT, ComfyUI and LightX2V, musubi/kohya, ours) read
onto our parameter paths, merged into the weights or applied unmerged, and ours exported to those layouts.

    pipe = pipe.load_lora("style.safetensors", strength=0.8)              # a new pipeline, weights merged
    pipe = pipe.load_lora("lightning_high.safetensors", expert="high")    # A14B: one expert
    pipe = pipe.load_lora("style.safetensors", strength=[1, 1, 0, 0], merge=False)  # unmerged, per step
    weights = read_lora("style.safetensors", pipe.dit_config)             # the mapped deltas, checked
    export_lora("mine.safetensors", lora, lora_cfg, dit_cfg, "comfyui")   # our trained adapters, for ComfyUI

Files: formats.py (detection, key tables), ours.py (`wan22 train`'s file), load.py (reading + mapping),
apply.py (merged arithmetic), unmerged.py (LoRAs applied inside the sampling loop, per-step strengths),
export.py (writing ComfyUI / diffusers files).
"""

from wan22_jax.lora.apply import apply_deltas, merge_into_experts, merge_state
from wan22_jax.lora.export import expert_path, export_lora, export_lora_file
from wan22_jax.lora.formats import FORMATS, detect_format
from wan22_jax.lora.load import LoraWeights, read_lora
from wan22_jax.lora.ours import LoraConfig
from wan22_jax.lora.unmerged import ExpertLoras, attach, build_expert_loras

__all__ = ["ExpertLoras", "FORMATS", "LoraConfig", "LoraWeights", "apply_deltas", "attach", "build_expert_loras",
           "detect_format", "expert_path", "export_lora", "export_lora_file", "merge_into_experts", "merge_state",
           "read_lora"]
