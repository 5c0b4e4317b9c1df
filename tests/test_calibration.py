"""Temperature scaling: the fitted temperature recovers a known one, lowers the log-likelihood,
lives in the saved model and leaves the predicted classes alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders import image_recipe, write_image_folder


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_fitted_temperature_recovers_the_one_that_made_the_labels():
    """Labels drawn from softmax(z / 3) while the model says softmax(z): over-confident by a
    temperature of 3, which the fit finds (within 10%) and which lowers the NLL; the same for
    one sigmoid label at T = 0.5 (under-confident) beside one at T = 2."""
    from tlmulti.training.calibration import fit_temperature, nll

    rng = np.random.default_rng(0)
    z = rng.normal(scale=4.0, size=(4000, 5))
    y = np.array([rng.choice(5, p=p) for p in _softmax(z / 3.0)])
    (t,) = fit_temperature(y, _softmax(z), sigmoid=False)
    assert t == pytest.approx(3.0, rel=0.1)
    from tlmulti.training.calibration import _scaled

    assert nll(y, _scaled(_softmax(z), t, False), False) < nll(y, _softmax(z), False) - 0.1

    logits = rng.normal(scale=2.0, size=(4000, 2))
    truth = 1 / (1 + np.exp(-logits / np.array([0.5, 2.0])))
    labels = (rng.random(truth.shape) < truth).astype(float)
    t_sig = fit_temperature(labels, 1 / (1 + np.exp(-logits)), sigmoid=True)
    assert t_sig[0] == pytest.approx(0.5, rel=0.1) and t_sig[1] == pytest.approx(2.0, rel=0.1)


def test_the_layer_matches_numpy_and_survives_saving(tmp_path):
    import keras

    from tlmulti.layers.calibration import TemperatureScaling
    from tlmulti.training.calibration import _scaled

    probs = _softmax(np.random.default_rng(1).normal(size=(6, 4))).astype("float32")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, TemperatureScaling([2.5])(inputs))
    np.testing.assert_allclose(model.predict(probs, verbose=0), _scaled(probs, 2.5, False), atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(probs, verbose=0), model.predict(probs, verbose=0), atol=1e-6)
    assert np.array_equal(loaded.predict(probs, verbose=0).argmax(1), probs.argmax(1))


def test_a_run_with_temperature_scaling_keeps_its_classes_and_lowers_validation_nll(tiny_backbone, tmp_path):
    """Two runs from one seed, with and without calibration: the same test accuracy, the saved
    model carries the layer, metrics.json and report.html show the temperature and the ECE / NLL
    before and after, and the validation NLL does not rise (it is what the fit minimises)."""
    import keras

    import tlmulti
    import tlmulti.layers  # noqa: F401

    data = write_image_folder(tmp_path / "images", per_class=16)
    test = write_image_folder(tmp_path / "test", per_class=8, seed=5)
    phases = [{"name": "head", "epochs": 6, "learning_rate": 0.05}]
    runs = {}
    for mode in ("none", "temperature"):
        recipe = image_recipe(tiny_backbone, data, phases=phases, calibration=mode,
                              output={"plots": True})
        recipe.data.test = str(test)
        runs[mode] = tlmulti.train(recipe, out=tmp_path / mode)
    plain, calibrated = runs["none"], runs["temperature"]
    record = calibrated.metrics["calibration"]
    assert record["method"] == "temperature" and record["temperature"] > 0
    assert record["val"]["nll_after"] <= record["val"]["nll_before"] + 1e-9
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(record["test"])
    assert "calibration" not in plain.metrics
    assert calibrated.metrics["test"]["accuracy"] == plain.metrics["test"]["accuracy"]
    saved = keras.saving.load_model(calibrated.dir / "model.keras")
    assert "temperature_scaling" in [layer.name for layer in saved.layers]
    assert json.loads((calibrated.dir / "metrics.json").read_text())["calibration"]["temperature"] == \
        pytest.approx(record["temperature"])
    page = (calibrated.dir / "report.html").read_text()
    assert "Temperature scaling fitted on the validation split" in page
