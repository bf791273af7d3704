"""Checkpoint conversion: declarative tables from official/Diffusers tensor names to our parameter paths."""
