"""Reading checkpoint files safely (safetensors without torch; .pth only through a weights-only reader)."""
