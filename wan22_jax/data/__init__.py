"""The mini-world: procedural text -> video clips of coloured shapes, a detector that reads them back, and the
tokenizer of its prompt corpus."""

from wan22_jax.data.mini_world import (BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, Clip, MiniWorld, Scene,
                                       all_scenes, held_out_scenes, prompt_corpus, train_scenes)

__all__ = ["BACKGROUNDS", "COLOURS", "DIRECTIONS", "SHAPES", "Clip", "MiniWorld", "Scene", "all_scenes",
           "held_out_scenes", "prompt_corpus", "train_scenes"]
