"""Benchmarks with random weights (`wan22 bench dit|t5|vae`). Numbers go into the README, never into tests."""
