"""The S2V audio feature path: file loading, interpolation, buckets, and wav2vec2's input checks.
(Parity with the official path is the reference case s2v_audio.)"""

import jax
import numpy as np
import pytest
import soundfile
from flax import nnx

from wan22_jax.errors import InputError, InputFileError
from refcases import REFERENCE_DIR
from wan22_jax.convert.wav2vec2 import load_wav2vec2
from wan22_jax.models.s2v.audio_encoder import (audio_embedding, bucket_indices, encode_audio_file,
                                                linear_interpolation, load_audio, normalize)
from wan22_jax.verify import load_case, relative_error
from wan22_jax.models.s2v.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model


def test_float_wav_at_16k_loads_bit_exactly(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, 4000).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), x)


def test_stereo_is_averaged_and_other_rates_resampled(tmp_path):
    t = np.arange(8000) / 8000.0
    left = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    soundfile.write(tmp_path / "s.wav", np.stack([left, 0 * left], axis=1), 8000, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav")
    assert y.dtype == np.float32 and y.shape == (16000,)  # ceil(8000 * 16000 / 8000)
    want = 0.25 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000.0)
    assert np.abs(y[200:-200] - want[200:-200]).max() < 1e-3  # away from the resampler's edges


def test_missing_or_unreadable_audio_file_is_named(tmp_path):
    with pytest.raises(InputFileError, match="nope.wav' does not exist"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(InputFileError, match="junk.wav' cannot be read"):
        load_audio(tmp_path / "junk.wav")


def test_normalize_is_zero_mean_unit_variance():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 3 + 2
    y = normalize(x)
    assert y.shape == (1, 1000) and y.dtype == np.float32
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std()) - 1) < 1e-4
    with pytest.raises(InputError, match=r"waveform has shape \(2, 5\)"):
        normalize(np.zeros((2, 5), np.float32))


def test_linear_interpolation_matches_numpy_interp():
    feat = np.random.default_rng(2).standard_normal((3, 44, 5)).astype(np.float32)
    out = np.asarray(linear_interpolation(feat))
    assert out.shape == (3, 26, 5)  # int(44 / 50 * 30)
    pos = np.linspace(0, 43, 26)  # align_corners=True: the end points map onto each other
    want = np.array([[np.interp(pos, np.arange(44), feat[i, :, c]) for c in range(5)] for i in range(3)])
    np.testing.assert_allclose(out, want.transpose(0, 2, 1), rtol=0, atol=1e-5)


def test_buckets_follow_the_16fps_clock_and_pad_with_zeros():
    idx, valid, num_repeat = bucket_indices(26, 8)
    assert num_repeat == 2 and idx.shape == (16, 1)  # int(26 / (8 * 30/16)) + 1 clips of 8 frames
    # video frame j takes audio frame round(j * 30/16), numpy's half-to-even (22.5 -> 22)
    centre = [0, 2, 4, 6, 8, 9, 11, 13, 15, 17, 19, 21, 22, 24, 26, 28]
    np.testing.assert_array_equal(idx[:14, 0], centre[:14])
    np.testing.assert_array_equal(valid, [c < 26 for c in centre])  # frames 26, 28 are past the audio
    feat = np.random.default_rng(3).standard_normal((2, 26, 3)).astype(np.float32)
    emb = np.asarray(audio_embedding(feat, idx, valid))
    assert emb.shape == (1, 2, 3, 16)
    np.testing.assert_array_equal(emb[0, :, :, 3], feat[:, idx[3, 0]])
    assert not emb[..., 15].any()


def test_bucket_with_neighbours_m1():
    idx, valid, _ = bucket_indices(26, 8, m=1)
    assert idx.shape == (16, 3)
    np.testing.assert_array_equal(idx[0], [0, 0, 1])  # clipped at the start
    assert (idx[valid] <= 25).all()


def test_wav2vec2_rejects_a_too_short_waveform():
    cfg = Wav2Vec2Config(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                         conv_dim=(4,) * 7, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    # shapes only (eager op-by-op execution of the convolutions costs ~10 s): the check runs while tracing
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Wav2Vec2Model(cfg, rngs=nnx.Rngs(0))))

    def run(samples, **kw):
        return jax.eval_shape(lambda s: nnx.merge(graphdef, s)(np.zeros((1, samples), np.float32), **kw), state)

    with pytest.raises(InputError, match="the waveform has 100 samples; wav2vec2 needs at least 400"):
        run(100)
    assert run(800, last_normed=False).shape == (3, 1, 2, 8)


# slow (8 s): the s2v_audio reference case checks the encoder, tests/pipeline/test_s2v_pipeline.py reads WAV files
@pytest.mark.slow
def test_audio_file_through_the_reference_encoder(tmp_path):
    """The s2v_audio case from a WAV file on disk (the official path starts with librosa.load of a file)."""
    case = load_case(REFERENCE_DIR / "s2v_audio")
    soundfile.write(tmp_path / "speech.wav", case.inputs["waveform"], 16000, subtype="FLOAT")
    model = load_wav2vec2(case.checkpoint / "wav2vec2-large-xlsr-53-english")
    out = encode_audio_file(model, tmp_path / "speech.wav", case.call["infer_frames"], last_normed=False)
    assert out["num_repeat"] == int(case.outputs["num_repeat"][0])
    assert relative_error(np.asarray(out["audio_emb"]), case.outputs["audio_emb"]) <= case.tolerance
