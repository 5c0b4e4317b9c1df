"""Exports of every task to SavedModel, TFLite and ONNX, checked against the run's own model on
the same inputs (tiny models, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders import (
    make_tiny_bert_preset, register_tiny_bert, register_tiny_cnn, tiny_texts, write_csv, write_image_folder,
    write_seg_folder, write_tones,
)

FORMATS = ["saved_model", "tflite", "onnx"]
COMMON = {"callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False}, "seed": 0}


def _train(recipe, out):
    import tlmulti

    tlmulti.train(tlmulti.recipe.from_dict({**recipe, **COMMON}), out=out)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny finished run per task, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("export_runs")
    register_tiny_cnn("tiny_cnn.export")
    images = write_image_folder(root / "img", classes=("cat", "dog", "owl"), per_class=8)
    seg = write_seg_folder(root / "seg", 3)
    texts = write_csv(root / "texts.csv", tiny_texts(24, 0))
    register_tiny_bert(make_tiny_bert_preset(root / "bert"))
    tones = write_tones(root / "tones")
    one_phase = [{"epochs": 3, "learning_rate": 0.02}]
    return {
        "image": (_train({"task": "image_classification", "backbone": {"name": "tiny_cnn.export"},
                          "data": {"train": str(images), "image_size": [16, 16], "batch_size": 8,
                                   "augment": {"flip": "horizontal", "contrast": 0.1}},
                          "phases": one_phase}, root / "run_image"), images),
        "segmentation": (_train({"task": "segmentation", "backbone": {"name": "tiny_cnn.export"},
                                 "head": {"decoder_filters": [8, 8]},
                                 "data": {"train": str(seg), "tile": [16, 16], "batch_size": 8,
                                          "classes": ["background", "nucleus"]}, "phases": one_phase},
                                root / "run_seg"), seg),
        "text": (_train({"task": "text_classification", "backbone": {"name": "tiny_bert.test"},
                         "head": {"pooling": "mean"}, "data": {"train": str(texts), "batch_size": 8},
                         "phases": one_phase}, root / "run_text"), texts),
        "speech": (_train({"task": "speech_classification", "backbone": {"name": "audio_cnn.scratch"},
                           "data": {"train": str(tones / "manifest.csv"), "clip_seconds": 0.4, "batch_size": 4,
                                    "augment": {"shift": 0.1, "time_masks": 1}},
                           "phases": one_phase}, root / "run_speech"), tones),
    }


def _inputs(task, data, info, run_dir):
    """Raw inputs as ``predict`` reads them, in the exported model's input form, and the run's outputs."""
    import tlmulti
    from tlmulti.runs import load_run

    recipe, t, model = load_run(run_dir)
    model = tlmulti.load_model(run_dir)
    if task in ("image", "segmentation"):
        folder = data if task == "image" else data / "images"
        x, _ = t.read_inputs([str(folder)])
        x = np.asarray(x, np.float32)
        if info["format"] == "tflite":
            import tensorflow as tf

            h, w = info["input"]["image"]["shape"][1:3]
            x = tf.image.resize(x, (h, w)).numpy()
        return x, model.predict(x, verbose=0)
    if task == "speech":
        x, _ = t.read_inputs([str(data)])
        return np.asarray(x, np.float32), model.predict(x, verbose=0)
    texts = np.array([r[0] for r in tiny_texts(24, 1)], dtype=object)
    expected = model.predict(texts, verbose=0)
    if info["format"] == "saved_model":
        return texts, expected
    tokens = model.get_layer("tokenizer")(texts)
    return {k: np.asarray(v, np.int32) for k, v in tokens.items()}, expected


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("task", ["image", "segmentation", "text", "speech"])
def test_export_matches_the_run(task, fmt, runs, tmp_path):
    from tlmulti.export import ExportedModel, export_run

    run_dir, data = runs[task]
    folder = export_run(run_dir, fmt, tmp_path / "export")
    info = json.loads((folder / "export.json").read_text())
    run_info = json.loads((run_dir / "run.json").read_text())
    assert (folder / "labels.txt").read_text().split("\n")[:-1] == run_info["classes"]
    assert info["source_run"] == str(run_dir.resolve()) and info["format"] == fmt
    if task in ("image", "speech"):
        assert info["augmentation_removed"]  # flips / contrast, waveform shift and SpecAugment are not in it
    if task == "text" and fmt != "saved_model":
        assert (folder / "vocab.txt").is_file() and "token_ids" in info["input"]
    check = info["check"]  # the export measured itself on the run's validation examples
    assert check["split"] == "validation" and check["examples"] > 0 and check["latency_ms"] > 0
    assert check["metric"] == ("mean_dice" if task == "segmentation" else "accuracy")
    assert check["agreement"] == 1.0 and abs(check["drop"]) <= 1e-6 and "warning" not in check
    x, expected = _inputs(task, data, info, run_dir)
    got = ExportedModel(folder).predict(x)
    if task == "segmentation":
        assert got["class_map"].shape == expected.shape[:-1]
        np.testing.assert_array_equal(got["class_map"], expected.argmax(-1))
        got = got["probabilities"]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("quantize,agreement", [("float16", 1.0), ("dynamic", 0.9), ("int8", 0.8)])
def test_quantized_tflite_agrees_with_the_run(quantize, agreement, runs, tmp_path):
    from tlmulti.export import ExportedModel, export_run

    run_dir, data = runs["image"]
    folder = export_run(run_dir, "tflite", tmp_path / quantize, quantize=quantize)
    info = json.loads((folder / "export.json").read_text())
    x, expected = _inputs("image", data, info, run_dir)
    got = ExportedModel(folder).predict(x)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= agreement
    assert info["quantize"] == quantize and info["check"]["agreement"] >= agreement


@pytest.mark.parametrize("task", ["text", "speech"])
def test_dynamic_range_text_and_speech_exports_measure_themselves(task, runs, tmp_path):
    from tlmulti.export import export_run

    folder = export_run(runs[task][0], "tflite", tmp_path / "dynamic", quantize="dynamic")
    check = json.loads((folder / "export.json").read_text())["check"]
    assert check["metric"] == "accuracy" and check["examples"] > 0 and 0 <= check["agreement"] <= 1
    assert check["drop"] == pytest.approx(check["run"] - check["export"], abs=1e-6)


def test_export_refusals(runs, tmp_path):
    from tlmulti.errors import RunError
    from tlmulti.export import export_run

    run_dir, _ = runs["image"]
    folder = export_run(run_dir, "onnx", tmp_path / "once")
    with pytest.raises(RunError, match="already exists; choose another --out or pass --overwrite"):
        export_run(run_dir, "onnx", folder)
    assert export_run(run_dir, "onnx", folder, overwrite=True) == folder
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not a tlmulti export folder"):
        export_run(run_dir, "onnx", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(RunError, match="not finished.*tlmulti resume"):
        export_run(unfinished, "tflite", tmp_path / "x")
    with pytest.raises(RunError, match="applies to TFLite"):
        export_run(run_dir, "onnx", tmp_path / "y", quantize="int8")


def test_an_onnx_graph_that_does_not_load_is_refused_not_written(runs, tmp_path, monkeypatch):
    import onnxruntime

    from tlmulti.errors import RunError
    from tlmulti.export import export_run

    def broken(*args, **kwargs):
        raise RuntimeError("No Op registered for Foo with domain_version of 17")

    monkeypatch.setattr(onnxruntime, "InferenceSession", broken)
    with pytest.raises(RunError, match="ONNX conversion of this model failed.*Foo.*saved_model or tflite"):
        export_run(runs["image"][0], "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_exact_gelu_converts_to_onnx(tmp_path):
    """TensorFlow's exact GELU is 0.5 x erfc(-x / sqrt 2); tf2onnx lacks Erfc, the export adds it."""
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from tlmulti.export import _register_onnx_handlers

    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Activation(lambda v: tf.math.erfc(v))(inputs))
    _register_onnx_handlers()
    tf2onnx.convert.from_keras(model, input_signature=(tf.TensorSpec((None, 5), tf.float32),), opset=17,
                               output_path=str(tmp_path / "m.onnx"))
    x = np.linspace(-3, 3, 10, dtype=np.float32).reshape(2, 5)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, tf.math.erfc(x).numpy(), atol=1e-6)
