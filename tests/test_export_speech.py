"""Quantized speech exports: the log-mel front end stays float in dynamic-range and int8 TFLite
exports, attention's activation-by-activation matmuls stay float in int8, and export.json says
which layers and why (tiny models, offline)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.builders import register_tiny_audio_cnn, write_tones
from tlmulti.cli import main

COMMON = {"callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False}, "seed": 0}
TOLERANCE = 0.05  # quantized against the run on its own validation examples (the tiny run's few clips)
# Whisper's log-mel front end (keras_hub.layers.WhisperAudioConverter): log10 over 8 decades
WHISPER_FRONT_END = {"scale": "whisper", "normalize": "none", "n_fft": 400, "hop_length": 160, "fmin": 0.0,
                     "fmax": 8000.0}


def _convert(model, optimize: bool, samples=None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if optimize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if samples is not None:
        conv.representative_dataset = lambda: ([s] for s in samples)
    with contextlib.redirect_stdout(io.StringIO()):
        return conv.convert()


def _run(blob: bytes, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for row in x:
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def _weight_types(blob: bytes) -> dict:
    """``{op output tensor name: [types of its constant inputs]}`` of a TFLite model."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    graph = model.subgraphs[0]
    types = {}
    for op in graph.operators:
        name = graph.tensors[op.outputs[0]].name
        name = name.decode() if isinstance(name, bytes) else name
        types[name] = [flatbuffer_utils.type_to_name(graph.tensors[i].type) for i in op.inputs
                       if i >= 0 and model.buffers[graph.tensors[i].buffer].data is not None]
    return types


def _waves(n: int, samples: int = 8000, seed: int = 0) -> np.ndarray:
    """Harmonic tones that fade out, over faint noise: loud and quiet bins in every clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    out = []
    for _ in range(n):
        f0 = rng.uniform(120, 300)
        wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * np.exp(-t * rng.uniform(2, 8))
        out.append(0.5 * wave / np.abs(wave).max() + 1e-3 * rng.normal(size=samples))
    return np.asarray(out, np.float32)


def test_dynamic_range_log_mel_runs_float_kernels_and_matches_the_float_front_end():
    import keras

    from tlmulti import export_quality as quality
    from tlmulti.layers.audio import LogMelSpectrogram

    inp = keras.Input((8000,), batch_size=1, name="waveform")
    model = keras.Model(inp, LogMelSpectrogram(n_mels=80, name="log_mel", **WHISPER_FRONT_END)(inp))
    x = _waves(6)
    want = model.predict(x, verbose=0)
    float_blob, dynamic = _convert(model, False), _convert(model, True)
    as_converted = np.abs(_run(dynamic, x) - want)
    # int8 weights quantize the power spectrum per frame on the fly: the quiet mel bands are lost
    assert as_converted.max() > 0.5 and np.quantile(as_converted, 0.99) > 0.1, as_converted.max()
    kept_blob, kept = quality._float_weights(dynamic, float_blob, ["log_mel"])
    assert sorted(op for _, op in kept["log_mel"]) == ["CONV_2D", "FULLY_CONNECTED"]  # the STFT and the mel filters
    np.testing.assert_allclose(_run(kept_blob, x), want, atol=1e-3)
    assert "INT8" in {t for types in _weight_types(dynamic).values() for t in types}
    assert "INT8" not in {t for types in _weight_types(kept_blob).values() for t in types}


def test_int8_keeps_attention_matmuls_float_where_int8_disagrees():
    import keras

    from tlmulti import export_quality as quality

    keras.utils.set_random_seed(0)
    x = keras.Input((24, 16), batch_size=1, name="x")
    h = keras.layers.MultiHeadAttention(2, 8, name="attention")(x, x)
    out = keras.layers.Dense(4, activation="softmax", name="classes")(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(x, out)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(size=(1, 24, 16)).astype(np.float32)} for _ in range(100)]
    reference = np.concatenate([model(s["x"]).numpy() for s in samples])

    def converter():
        import tensorflow as tf

        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([s["x"]] for s in samples)
        return conv

    with contextlib.redirect_stdout(io.StringIO()):
        blob = converter().convert()
    kept, record = quality.int8_model(blob, converter, samples, ["x"], reference)
    tries = record["tries"]
    assert tries[0]["added"] is None and tries[0]["agreement"] < quality.AGREEMENT_TARGET  # every layer int8
    assert tries[1]["added"] == "BATCH_MATMUL" and tries[1]["agreement"] > tries[0]["agreement"] + 0.05
    assert max(t["agreement"] for t in tries) >= 0.99
    groups = record["float_groups"]
    assert groups[0]["layers"] == "BATCH_MATMUL" and groups[0]["count"] == 2 and "XNNPACK" in groups[0]["why"]
    assert [name.split("/")[:2] for name in record["float_layers"][:2]] == [["attention_1", "einsum"],
                                                                              ["attention_1", "einsum_1"]]
    got = _run(kept, np.concatenate([s["x"] for s in samples]))
    assert np.mean(got.argmax(-1) == reference.argmax(-1)) >= 0.99


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    """A tiny log-mel CNN on tones, with Whisper's log-mel front end."""
    import tlmulti

    root = tmp_path_factory.mktemp("speech_quant")
    tones = write_tones(root / "tones", per_class=8)
    recipe = {"task": "speech_classification", "backbone": {"name": register_tiny_audio_cnn("tiny_audio_cnn.quant")},
              "data": {"train": str(tones / "manifest.csv"), "clip_seconds": 0.4, "batch_size": 4, "val_split": 0.25,
                       "features": WHISPER_FRONT_END},
              "phases": [{"epochs": 6, "learning_rate": 0.01}], **COMMON}
    tlmulti.train(tlmulti.recipe.from_dict(recipe), out=root / "run")
    return root / "run"


def _export(run, out, *args):
    result = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--out", str(out), *args])
    assert result.exit_code == 0, result.output + result.stderr
    return result, json.loads((out / "export.json").read_text())


def _within_tolerance(check):
    assert check["split"] == "validation" and check["examples"] == 4 and check["metric"] == "accuracy"
    assert check["export"] >= check["run"] - TOLERANCE and check["agreement"] >= 1 - TOLERANCE


def test_dynamic_speech_export_keeps_the_front_end_float(speech_run, tmp_path):
    result, info = _export(speech_run, tmp_path / "dynamic", "--quantize", "dynamic")
    _within_tolerance(info["check"])
    record = info["dynamic"]
    assert [g["layers"] for g in record["float_groups"]] == ["log_mel"]
    group = record["float_groups"][0]
    assert group["ops"] == ["CONV_2D", "FULLY_CONNECTED"] and group["count"] == 2 and "log-mel" in group["why"]
    assert [t["added"] for t in record["tries"]] == [None, "log_mel"]
    assert all("log_mel" in name for name in record["float_layers"]) and len(record["float_layers"]) == 2
    types = _weight_types((tmp_path / "dynamic" / "model.tflite").read_bytes())
    front = [t for name, ts in types.items() if "log_mel" in name for t in ts]
    assert "FLOAT32" in front and "INT8" not in front  # the tiny CNN's own weights are below TFLite's 1,024
    assert "Kept in float: 2 layers (log_mel)." in result.output


def test_int8_speech_export_keeps_the_front_end_float_first(speech_run, tmp_path, monkeypatch):
    from tlmulti import export_quality

    result, info = _export(speech_run, tmp_path / "int8", "--quantize", "int8")
    _within_tolerance(info["check"])
    monkeypatch.setattr(export_quality, "AGREEMENT_TARGET", 1.01)  # never reached: every step is tried
    monkeypatch.setattr(export_quality, "FLOAT_LAYER_COUNTS", (2,))
    result, info = _export(speech_run, tmp_path / "int8_all_steps", "--quantize", "int8")
    record = info["int8"]
    assert [t["added"] for t in record["tries"]] == [None, "log_mel", "largest error"]  # the CNN has no BATCH_MATMUL
    front = record["tries"][1]["float_layers"]
    assert front >= 5 and all("log_mel" in name for name in record["float_layers"][:front])
    best = max(record["tries"], key=lambda t: t["agreement"])  # the first of the best is kept
    assert len(record["float_layers"]) == best["float_layers"]
    if best["float_layers"]:
        assert record["float_groups"][0] == {"layers": "log_mel", "why": record["float_groups"][0]["why"],
                                             "count": front} and "log-mel" in record["float_groups"][0]["why"]
        assert f"Kept in float: {best['float_layers']} layers (log_mel" in result.output
