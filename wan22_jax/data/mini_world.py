"""The mini-world: short clips of one coloured shape moving in a straight line over a plain background, each with
a template prompt in English or Japanese ("a red circle moving left on a black background",
"黒い背景の上を左へ動く赤い丸").

A scene is (colour, shape, direction, background); everything else (start position, size, speed) is drawn from
the clip's own random stream, so clip `i` of seed `s` is the same array at any time, in any process, at any
position in a batch. A fixed set of colour x shape x direction combinations is held out of training
(`held_out_scenes`): each held-out combination still has every pair of its attributes seen in training, so a
model can only get them right by composing words, not by remembering clips.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from wan22_jax.errors import InputError

# RGB in [0, 255]; shape colours and backgrounds are far apart so a detector can separate them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 235), "yellow": (240, 215, 40)}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15), "white": (240, 240, 240), "gray": (128, 128, 128)}
# Shapes that differ in silhouette at the scale of a latent cell (round, wide, tall; all of about the same
# area). An earlier world used circle / square / triangle, which differ only in their corners: a small Wan VAE
# trained for 20 minutes on a 2-core CPU decoded all three as one blob (experiments/mini_world/README.md).
SHAPES = ("circle", "bar", "pillar")
# half-extents (rows, cols) of each shape in units of its size r
EXTENTS: dict[str, tuple[float, float]] = {"circle": (1.0, 1.0), "bar": (0.5, 1.6), "pillar": (1.6, 0.5)}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}

LANGUAGES = ("en", "ja")
# Japanese words of each attribute, as they sit in "<背景>背景の上を<方向>動く<色><形>" (a noun phrase, like a
# caption: "黒い背景の上を左へ動く赤い棒"). Colours as attributive adjectives (緑 takes の), the circle as the
# everyday 丸, directions with へ.
JA_WORDS: dict[str, str] = {
    "red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い",
    "circle": "丸", "bar": "棒", "pillar": "柱",
    "left": "左へ", "right": "右へ", "up": "上へ", "down": "下へ",
    "black": "黒い", "white": "白い", "gray": "灰色の"}
# the template's fixed Japanese words (background + "on the", moving)
JA_FILLERS = ("背景の上を", "動く")


@dataclasses.dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    direction: str
    background: str

    @property
    def prompt(self) -> str:
        """The English prompt."""
        return f"a {self.colour} {self.shape} moving {self.direction} on a {self.background} background"

    @property
    def prompt_ja(self) -> str:
        """The Japanese prompt: the background first, the shape last ("黒い背景の上を左へ動く赤い棒")."""
        w = JA_WORDS
        return (f"{w[self.background]}{JA_FILLERS[0]}{w[self.direction]}{JA_FILLERS[1]}"
                f"{w[self.colour]}{w[self.shape]}")

    def caption(self, language: str = "en") -> str:
        """The prompt in `language` ("en" or "ja")."""
        if language == "en":
            return self.prompt
        if language == "ja":
            return self.prompt_ja
        raise InputError(f"language {language!r}: use one of {LANGUAGES}")

    @property
    def combo(self) -> tuple[str, str, str]:
        """What the held-out split is defined on (the background is free)."""
        return self.colour, self.shape, self.direction


def _is_held_out(c: int, s: int, d: int) -> bool:
    # one combination in six, spread so that every (colour, shape), (colour, direction) and (shape, direction)
    # pair still occurs in training (checked by tests/data_world)
    return (c + 2 * s + 3 * d) % 6 == 0


def all_scenes() -> list[Scene]:
    return [Scene(c, s, d, b) for (ci, c), (si, s), (di, d), b in itertools.product(
        enumerate(COLOURS), enumerate(SHAPES), enumerate(DIRECTIONS), BACKGROUNDS)]


def held_out_scenes() -> list[Scene]:
    idx = {n: i for names in (COLOURS, SHAPES, DIRECTIONS) for i, n in enumerate(names)}
    return [s for s in all_scenes() if _is_held_out(idx[s.colour], idx[s.shape], idx[s.direction])]


def train_scenes() -> list[Scene]:
    held = set(held_out_scenes())
    return [s for s in all_scenes() if s not in held]


def prompt_corpus(languages: Sequence[str] = ("en",)) -> list[str]:
    """Every prompt of the world in each of `languages` (train and held-out: a tokenizer must know every word
    it will be asked)."""
    return [s.caption(lang) for lang in languages for s in all_scenes()]


def vocabulary(languages: Sequence[str] = LANGUAGES) -> list[str]:
    """The words the prompts of `languages` are made of, in a fixed order: English words as they are split by
    spaces, Japanese words as the template puts them together (Japanese has no spaces to split on)."""
    for lang in languages:
        if lang not in LANGUAGES:
            raise InputError(f"language {lang!r}: use one of {LANGUAGES}")
    attributes = (*COLOURS, *SHAPES, *DIRECTIONS, *BACKGROUNDS)
    words: list[str] = []
    if "en" in languages:
        words += ["a", "moving", "on", "background", *attributes]
    if "ja" in languages:
        words += [*JA_FILLERS, *(JA_WORDS[k] for k in attributes)]
    return words


@dataclasses.dataclass(frozen=True)
class Clip:
    video: np.ndarray  # [3, T, H, W] float32 in [-1, 1] (the VAE's input convention)
    scene: Scene
    centres: np.ndarray  # [T, 2] (row, col) of the shape centre in pixels

    @property
    def prompt(self) -> str:
        return self.scene.prompt


def _mask(shape: str, h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """[h, w] float coverage of the shape (size r), from 2x2 supersampling (soft edges are easier to autoencode)."""
    offs = (np.arange(2) + 0.5) / 2 - 0.5
    ys = (np.arange(h)[:, None] + offs[None]).reshape(-1)[:, None] + 0.5  # [2h, 1]
    xs = (np.arange(w)[:, None] + offs[None]).reshape(-1)[None, :] + 0.5  # [1, 2w]
    dy, dx = ys - cy, xs - cx
    if shape == "circle":
        m = dy * dy + dx * dx <= r * r
    elif shape in EXTENTS:
        ey, ex = EXTENTS[shape]
        m = (np.abs(dy) <= ey * r) & (np.abs(dx) <= ex * r)
    else:
        raise InputError(f"unknown shape {shape!r}; valid: {SHAPES}")
    return m.reshape(h, 2, w, 2).mean(axis=(1, 3))


def render(scene: Scene, *, height: int, width: int, frames: int, rng: np.random.Generator) -> Clip:
    """Draws one clip of `scene`; start, size and speed come from `rng`."""
    side = min(height, width)
    r = side * rng.uniform(0.12, 0.15)
    travel = side * rng.uniform(0.3, 0.35)  # centre displacement from first to last frame
    dy, dx = DIRECTIONS[scene.direction]
    ey, ex = EXTENTS[scene.shape]
    margin_y, margin_x = ey * r + 1, ex * r + 1
    # start so that the whole path stays inside the frame
    lo_y, hi_y = margin_y + max(0, -dy) * travel, height - margin_y - max(0, dy) * travel
    lo_x, hi_x = margin_x + max(0, -dx) * travel, width - margin_x - max(0, dx) * travel
    y0, x0 = rng.uniform(lo_y, max(lo_y, hi_y)), rng.uniform(lo_x, max(lo_x, hi_x))
    steps = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    centres = np.stack([y0 + dy * travel * steps, x0 + dx * travel * steps], axis=1)
    bg = np.asarray(BACKGROUNDS[scene.background], np.float32) / 127.5 - 1
    fg = np.asarray(COLOURS[scene.colour], np.float32) / 127.5 - 1
    video = np.empty((3, frames, height, width), np.float32)
    for t, (cy, cx) in enumerate(centres):
        m = _mask(scene.shape, height, width, cy, cx, r)[None]
        video[:, t] = bg[:, None, None] * (1 - m) + fg[:, None, None] * m
    return Clip(video, scene, centres.astype(np.float32))


class MiniWorld:
    """An endless, seeded stream of clips of one split.

    Args:
      height, width, frames: clip size (any; the VAE wants frames = 1 + 4k and sides multiples of its stride).
      split: "train" (scenes minus the held-out combinations), "held_out", or "all".
      seed: stream seed; clip `index` depends only on (seed, split, index).
    """

    def __init__(self, *, height: int = 64, width: int = 64, frames: int = 17, split: str = "train", seed: int = 0):
        if split not in ("train", "held_out", "all"):
            raise InputError(f"split {split!r}: use 'train', 'held_out' or 'all'")
        if min(height, width) < 16 or frames < 1:
            raise InputError(f"clip size {height}x{width}x{frames}: need sides >= 16 and >= 1 frame")
        self.height, self.width, self.frames, self.split, self.seed = height, width, frames, split, seed
        self.scenes = {"train": train_scenes, "held_out": held_out_scenes, "all": all_scenes}[split]()

    def clip(self, index: int) -> Clip:
        split_id = ("train", "held_out", "all").index(self.split)
        rng = np.random.default_rng([self.seed, split_id, index])
        scene = self.scenes[int(rng.integers(len(self.scenes)))]
        return render(scene, height=self.height, width=self.width, frames=self.frames, rng=rng)

    def batch(self, position: int, size: int) -> dict:
        """Clips position .. position + size - 1 as {"video": [B, 3, T, H, W], "prompts": [str], "scenes"}."""
        clips = [self.clip(position + i) for i in range(size)]
        return {"video": np.stack([c.video for c in clips]), "prompts": [c.prompt for c in clips],
                "scenes": [c.scene for c in clips]}

    def batches(self, size: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(position after the batch, batch), forever: resume by passing the saved position as `start`."""
        pos = start
        while True:
            b = self.batch(pos, size)
            pos += size
            yield pos, b


def to_uint8_frames(video: np.ndarray) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8."""
    v = np.clip((np.asarray(video, np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(v, 0, -1)


def scene_of_prompt(prompt: str, scenes: Sequence[Scene] | None = None) -> Scene:
    """The scene whose English or Japanese prompt is `prompt`; InputError if none."""
    for s in scenes if scenes is not None else all_scenes():
        if prompt in (s.prompt, s.prompt_ja):
            return s
    raise InputError(f"not a mini-world prompt: {prompt!r}")
