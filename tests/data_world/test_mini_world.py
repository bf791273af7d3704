"""The mini-world: reproducible clips, a held-out split disjoint from training yet compositional, a detector
that reads rendered clips back."""

import collections
import itertools

import numpy as np
import pytest

from wan22_jax.data.detector import detect
from wan22_jax.data.mini_world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    JA_WORDS,
    LANGUAGES,
    SHAPES,
    MiniWorld,
    Scene,
    all_scenes,
    held_out_scenes,
    prompt_corpus,
    scene_of_prompt,
    to_uint8_frames,
    train_scenes,
    vocabulary,
)
from wan22_jax.errors import InputError


def test_clips_are_reproducible_from_seed_and_index():
    a, b = MiniWorld(seed=3), MiniWorld(seed=3)
    for i in (0, 7, 123):
        np.testing.assert_array_equal(a.clip(i).video, b.clip(i).video)
        assert a.clip(i).prompt == b.clip(i).prompt
    # a batch at any position holds the same clips as single draws
    batch = a.batch(5, 3)
    np.testing.assert_array_equal(batch["video"][1], a.clip(6).video)
    assert not np.array_equal(MiniWorld(seed=4).clip(0).video, a.clip(0).video)


@pytest.mark.parametrize("size", [(32, 48, 5), (64, 64, 17), (40, 24, 1)])
def test_any_size(size):
    h, w, t = size
    clip = MiniWorld(height=h, width=w, frames=t).clip(0)
    assert clip.video.shape == (3, t, h, w)
    assert clip.video.min() >= -1 and clip.video.max() <= 1


def test_held_out_split_is_disjoint_and_compositional():
    train, held = train_scenes(), held_out_scenes()
    assert set(train).isdisjoint(held)
    assert set(train) | set(held) == set(all_scenes())
    held_combos = {s.combo for s in held}
    assert held_combos.isdisjoint({s.combo for s in train})
    # every pair of attributes of a held-out combination occurs in training
    seen_pairs = collections.defaultdict(set)
    for s in train:
        for (i, a), (j, b) in itertools.combinations(enumerate(s.combo), 2):
            seen_pairs[(i, j)].add((a, b))
    for c in held_combos:
        for (i, a), (j, b) in itertools.combinations(enumerate(c), 2):
            assert (a, b) in seen_pairs[(i, j)], (c, a, b)
    stream = MiniWorld(split="train", seed=0)
    assert all(stream.clip(i).scene.combo not in held_combos for i in range(200))
    held_stream = MiniWorld(split="held_out", seed=0)
    assert all(held_stream.clip(i).scene.combo in held_combos for i in range(50))


def test_prompts():
    corpus = prompt_corpus()
    assert len(set(corpus)) == len(all_scenes())
    s = scene_of_prompt("a red circle moving left on a blue background".replace("blue", "black"))
    assert (s.colour, s.shape, s.direction, s.background) == ("red", "circle", "left", "black")
    with pytest.raises(InputError, match="not a mini-world prompt"):
        scene_of_prompt("a cat")
    with pytest.raises(InputError, match="split"):
        MiniWorld(split="test")


def test_detector_reads_rendered_clips():
    world = MiniWorld(height=64, width=64, frames=9, split="all", seed=11)
    for i in range(40):
        clip = world.clip(i)
        d = detect(to_uint8_frames(clip.video))
        assert d.matches(clip.scene) == {"colour": True, "shape": True, "direction": True}, (clip.prompt, d)
        assert d.background == clip.scene.background


def test_detector_reports_nothing_on_a_blank_video():
    d = detect(np.full((5, 32, 32, 3), 128, np.uint8))
    assert d.colour is None and d.shape is None and d.direction is None


def test_detector_survives_a_blurry_decoder():
    # generated frames are softer than renders: shapes are told apart by their silhouette's aspect, which a
    # 2-pixel Gaussian blur does not change enough to flip
    from scipy.ndimage import gaussian_filter
    world = MiniWorld(height=64, width=64, frames=5, split="all", seed=12)
    for i in range(30):
        clip = world.clip(i)
        blurred = gaussian_filter(clip.video, sigma=(0, 0, 2, 2))
        d = detect(to_uint8_frames(blurred))
        assert d.matches(clip.scene) == {"colour": True, "shape": True, "direction": True}, (clip.prompt, d)


def test_japanese_prompts():
    s = scene_of_prompt("a red bar moving left on a black background")
    assert s.prompt_ja == s.caption("ja") == "黒い背景の上を左へ動く赤い棒"
    assert scene_of_prompt("灰色の背景の上を上へ動く緑の丸") == Scene("green", "circle", "up", "gray")
    ja = prompt_corpus(("ja",))
    assert len(set(ja)) == len(all_scenes()) and prompt_corpus(LANGUAGES) == prompt_corpus() + ja
    # the Japanese words of the attributes are distinct and each sits once in its prompt
    words = [JA_WORDS[k] for k in (*COLOURS, *SHAPES, *DIRECTIONS, *BACKGROUNDS)]
    assert len(set(words)) == len(words)
    for scene in all_scenes()[::7]:
        for attr in (scene.colour, scene.shape, scene.direction, scene.background):
            assert scene.prompt_ja.count(JA_WORDS[attr]) == 1, (scene, attr)
    with pytest.raises(InputError, match="language 'fr'"):
        s.caption("fr")


def test_vocabulary_makes_every_prompt():
    vocab = vocabulary()
    assert len(set(vocab)) == len(vocab)
    for p in prompt_corpus():
        assert set(p.split()) <= set(vocab)
    en = set(vocabulary(("en",)))
    for p in prompt_corpus(("ja",)):  # the Japanese words tile every Japanese prompt
        rest = p
        for w in sorted(set(vocab) - en, key=len, reverse=True):
            rest = rest.replace(w, "")
        assert rest == "", p
