"""Every export measures itself on the run's validation examples: int8 keeps the float metric
within a stated tolerance, export.json holds the measurement, a bad calibration warns, and the
options that cannot work are refused (tiny model, offline)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.builders import register_tiny_cnn, write_image_folder
from tlmulti.cli import main

COMMON = {"callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False}, "seed": 0}
INT8_TOLERANCE = 0.05  # int8 against float TFLite on the tiny run's own validation examples (24 images)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import tlmulti

    root = tmp_path_factory.mktemp("quality")
    register_tiny_cnn("tiny_cnn.quality")
    images = write_image_folder(root / "img", classes=("red", "green", "blue"), per_class=40, size=(16, 16))
    recipe = {"task": "image_classification", "backbone": {"name": "tiny_cnn.quality"},
              "data": {"train": str(images), "image_size": [16, 16], "batch_size": 16, "val_split": 0.2},
              "phases": [{"epochs": 10, "learning_rate": 0.02}], **COMMON}
    tlmulti.train(tlmulti.recipe.from_dict(recipe), out=root / "run")
    return root / "run"


def _export(run, out, *args):
    result = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--out", str(out), *args])
    info = json.loads((out / "export.json").read_text()) if (out / "export.json").is_file() else None
    return result, info


def test_int8_stays_within_tolerance_of_float_and_export_json_says_so(run, tmp_path):
    result, fp32 = _export(run, tmp_path / "fp32")
    assert result.exit_code == 0, result.output + result.stderr
    result, int8 = _export(run, tmp_path / "int8", "--quantize", "int8")
    assert result.exit_code == 0, result.output + result.stderr
    for info in (fp32, int8):
        check = info["check"]
        assert check["split"] == "validation" and check["examples"] == 24 and check["metric"] == "accuracy"
        assert check["drop"] == pytest.approx(check["run"] - check["export"], abs=1e-6)
        assert check["file_mb"] == pytest.approx(info["file_bytes"] / 1e6, abs=1e-3) and check["latency_ms"] > 0
        assert 0 <= check["agreement"] <= 1 and check["max_drop"] == 0.01
    assert fp32["check"]["agreement"] == 1.0 and fp32["check"]["drop"] == 0
    assert int8["check"]["export"] >= fp32["check"]["export"] - INT8_TOLERANCE
    assert int8["check"]["agreement"] >= 1 - INT8_TOLERANCE
    assert int8["file_bytes"] < fp32["file_bytes"]
    record = int8["int8"]
    assert record["calibration_examples"] == 96  # every training example (fewer than 300)
    assert record["tries"][0]["float_layers"] == 0 and 0 <= record["tries"][0]["agreement"] <= 1
    assert isinstance(record["float_layers"], list)
    assert "Check: accuracy" in result.output and "top-1 agreement" in result.output


def test_layers_int8_costs_most_stay_float_when_int8_disagrees(run, tmp_path, monkeypatch):
    from tlmulti import export_quality

    monkeypatch.setattr(export_quality, "AGREEMENT_TARGET", 1.01)  # never reached: every try is made
    monkeypatch.setattr(export_quality, "FLOAT_LAYER_COUNTS", (1, 2))
    monkeypatch.setattr(export_quality, "MIN_RMSE_STEPS", 0.0)
    result, info = _export(run, tmp_path / "mixed", "--quantize", "int8")
    assert result.exit_code == 0, result.output + result.stderr
    record = info["int8"]
    assert [t["float_layers"] for t in record["tries"]] == [0, 1, 2]
    assert len(record["worst_layers"]) >= 2 and all(w["rmse_steps"] >= 0 for w in record["worst_layers"])
    best = max(record["tries"], key=lambda t: t["agreement"])  # the first of the best kept
    assert len(record["float_layers"]) == best["float_layers"]
    assert record["float_layers"] == [w["layer"] for w in record["worst_layers"][:best["float_layers"]]]
    assert info["check"]["agreement"] >= 1 - INT8_TOLERANCE


def test_held_out_training_examples_are_never_calibrated_on_and_counted_in_the_agreement(run, tmp_path):
    import numpy as np

    from tlmulti.export_quality import calibration_inputs
    from tlmulti.runs import load_run

    _, task, _ = load_run(run)
    calibration, held = calibration_inputs(task, 60, 20)
    assert len(calibration) == 60 and len(held) == 20
    assert not {a.tobytes() for a in np.asarray(calibration)} & {a.tobytes() for a in np.asarray(held)}
    everything, none = calibration_inputs(task, 300, 20)
    assert len(everything) == 96 and none is None  # the whole training split is calibrated on
    result, info = _export(run, tmp_path / "held", "--quantize", "int8", "--calibration-examples", "60")
    assert result.exit_code == 0, result.output + result.stderr
    record = info["int8"]
    assert record["agreement_examples"] == {"calibration": 60, "held_out": 36}  # the other 36 training examples
    assert "96 training examples (60 calibrated on, 36 held out)" in record["float_layer_rule"]
    assert all(round(t["agreement"] * 96, 6) == round(t["agreement"] * 96) for t in record["tries"])


def test_int8_agreement_counts_the_held_out_examples():
    import contextlib
    import io

    import keras
    import numpy as np
    import tensorflow as tf

    from tlmulti import export_quality as quality

    keras.utils.set_random_seed(0)
    x = keras.Input((8,), batch_size=1, name="x")
    model = keras.Model(x, keras.layers.Dense(3, activation="softmax", name="classes")(x))
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(20)]
    held = [{"x": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(10)]
    calibrated = np.concatenate([model(s["x"]).numpy() for s in samples])
    other = np.eye(3)[(np.concatenate([model(s["x"]).numpy() for s in held]).argmax(-1) + 1) % 3]

    def converter():
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([s["x"]] for s in samples)
        return conv

    with contextlib.redirect_stdout(io.StringIO()):
        blob = converter().convert()
    _, alone = quality.int8_model(blob, converter, samples, ["x"], calibrated)
    assert alone["agreement_examples"] == {"calibration": 20, "held_out": 0} and alone["tries"][0]["agreement"] >= 0.9
    _, record = quality.int8_model(blob, converter, samples, ["x"], np.concatenate([calibrated, other]),
                                   held_out=held)
    assert record["agreement_examples"] == {"calibration": 20, "held_out": 10}
    assert record["tries"][0]["agreement"] == round(alone["tries"][0]["agreement"] * 20 / 30, 4)  # held out: none agree
    assert len(record["tries"]) > 1  # below the target, so layers were kept float in turn


def test_one_calibration_example_loses_accuracy_and_warns(run, tmp_path):
    result, info = _export(run, tmp_path / "bad", "--quantize", "int8", "--calibration-examples", "1")
    assert result.exit_code == 0, result.output + result.stderr
    assert info["int8"]["calibration_examples"] == 1
    check = info["check"]
    assert check["drop"] > 0.01, check  # one red image gives no range for the other colours
    assert "Warning:" in result.stderr and "more than --max-drop 0.01" in result.stderr
    assert "--quantize float16" in check["warning"] and "--calibration-examples" in check["warning"]
    result, info = _export(run, tmp_path / "tolerant", "--quantize", "int8", "--calibration-examples", "1",
                           "--max-drop", "0.99")
    assert result.exit_code == 0 and "Warning" not in result.stderr and "warning" not in info["check"]


def test_check_zero_skips_the_measurement(run, tmp_path):
    result, info = _export(run, tmp_path / "unchecked", "--check", "0")
    assert result.exit_code == 0 and "check" not in info and "not measured (--check 0)" in result.output


@pytest.mark.parametrize("args,message", [
    (["--quantize", "int8", "--qat", "2"], "--qat: .*tf-keras \\(Keras 2\\) models; tlmulti runs are Keras 3"),
    (["--quantize", "dynamic", "--qat", "2"], "--qat applies to --quantize int8"),
    (["--check", "-1"], "--check must be 0"),
    (["--max-drop", "5"], "--max-drop is a metric difference between 0 and 1"),
    (["--quantize", "int8", "--calibration-examples", "0"], "--calibration-examples must be at least 1"),
])
def test_refusals_name_the_flag(run, tmp_path, args, message):
    import re

    result, info = _export(run, tmp_path / "refused", *args)
    assert result.exit_code != 0 and info is None and not (tmp_path / "refused").exists()
    assert re.search(message, result.stderr + result.output), result.stderr + result.output
