"""A deterministic detector for mini-world videos: which colour, which shape, which direction.

* background: the median colour of the frame border;
* shape pixels: those far from the background colour (per frame);
* colour: the palette colour nearest to the mean of the shape pixels;
* shape: the aspect ratio (width / height) of the mask's bounding box: bar ~3.2, circle 1, pillar ~0.31 — a
  coarse feature that survives the blur of a small decoder (the fill ratio is reported too);
* direction: the centroid's displacement from the first to the last frame, along its larger axis.

It never sees the prompt; on rendered clips it is right every time (tests/data_world).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wan22_jax.data.mini_world import BACKGROUNDS, COLOURS, Scene

# aspect-ratio boundaries pillar | circle | bar (geometric means of the neighbours' ratios)
_PILLAR_CIRCLE = 0.56
_CIRCLE_BAR = 1.79


@dataclasses.dataclass(frozen=True)
class Detection:
    colour: str | None
    shape: str | None
    direction: str | None
    background: str | None
    fill_ratio: float
    displacement: tuple[float, float]
    aspect: float = 0.0

    def matches(self, scene: Scene) -> dict[str, bool]:
        return {"colour": self.colour == scene.colour, "shape": self.shape == scene.shape,
                "direction": self.direction == scene.direction}


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    d = [np.sum((rgb - np.asarray(palette[n], np.float32)) ** 2) for n in names]
    return names[int(np.argmin(d))]


def detect(frames: np.ndarray, *, threshold: float = 60.0) -> Detection:
    """Reads one video.

    Args:
      frames: [T, H, W, 3] uint8 (or float in [0, 255]).
      threshold: RGB distance from the background above which a pixel belongs to the shape.
    Returns:
      a Detection (None fields where nothing was found).
    """
    v = np.asarray(frames, np.float32)
    border = np.concatenate([v[:, 0].reshape(-1, 3), v[:, -1].reshape(-1, 3), v[:, :, 0].reshape(-1, 3),
                             v[:, :, -1].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(np.sum((v - bg) ** 2, axis=-1))  # [T, H, W]
    masks = dist > threshold
    areas = masks.sum(axis=(1, 2))
    ok = areas >= 4
    if not ok.any():
        return Detection(None, None, None, _nearest(bg, BACKGROUNDS), 0.0, (0.0, 0.0))
    colour = _nearest(v[masks].mean(axis=0), COLOURS)
    fills, aspects, centres = [], [], []
    for m, good in zip(masks, ok):
        if not good:
            centres.append(None)
            continue
        ys, xs = np.nonzero(m)
        bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fills.append(len(ys) / (bh * bw))
        aspects.append(bw / bh)
        centres.append((ys.mean(), xs.mean()))
    fill, aspect = float(np.median(fills)), float(np.median(aspects))
    shape = "pillar" if aspect < _PILLAR_CIRCLE else ("circle" if aspect < _CIRCLE_BAR else "bar")
    seen = [c for c in centres if c is not None]
    dy, dx = (seen[-1][0] - seen[0][0], seen[-1][1] - seen[0][1]) if len(seen) > 1 else (0.0, 0.0)
    if max(abs(dy), abs(dx)) < 1.0:
        direction = None
    elif abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    return Detection(colour, shape, direction, _nearest(bg, BACKGROUNDS), fill, (float(dy), float(dx)), aspect)
