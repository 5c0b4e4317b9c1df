"""Test-time augmentation: averaged flipped views, maps flipped back, and the CLI's metric with and
without it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders import image_recipe, write_image_folder


def _image(seed=0, shape=(2, 12, 20, 3)):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def test_tta_of_a_flip_invariant_classifier_equals_its_plain_prediction():
    import keras

    from tlmulti.evaluation.tta import AXES, tta_model

    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    x = _image()
    for flip in ("horizontal", "vertical", "both"):
        averaged = tta_model(model, AXES[flip], maps=False)
        np.testing.assert_allclose(averaged.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_maps_are_flipped_back_before_the_average():
    import keras

    from tlmulti.evaluation.tta import AXES, tta_model

    inputs = keras.Input((12, 20, 3))
    model = keras.Model(inputs, keras.layers.Activation("linear")(inputs))  # output = input, pixel for pixel
    x = _image()
    np.testing.assert_allclose(tta_model(model, AXES["both"], maps=True).predict(x, verbose=0), x, rtol=1e-6)
    unflipped = tta_model(model, AXES["horizontal"], maps=False).predict(x, verbose=0)
    assert np.abs(unflipped - x).max() > 10  # averaging without the inverse would blur left and right


def test_a_classifier_that_depends_on_the_side_changes_under_tta():
    import keras

    from tlmulti.evaluation.tta import AXES, tta_model

    inputs = keras.Input((12, 20, 3))
    flat = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", kernel_initializer="glorot_uniform")(flat))
    x = _image(1) / 255.0
    plain = model.predict(x, verbose=0)
    mirrored = model.predict(x[:, :, ::-1], verbose=0)
    averaged = tta_model(model, AXES["horizontal"], maps=False).predict(x, verbose=0)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-6)


@pytest.mark.parametrize("flip", ["horizontal", "none"])
def test_cli_evaluate_with_tta_reports_both_metrics(tiny_backbone, tmp_path, flip):
    from click.testing import CliRunner

    import tlmulti
    from tlmulti.cli import main

    train = write_image_folder(tmp_path / "images", per_class=8, size=(16, 16))
    test = write_image_folder(tmp_path / "test", per_class=4, size=(16, 16), seed=3)
    data = {"train": str(train), "val_split": 0.25, "batch_size": 4, "image_size": [16, 16],
            "augment": {"flip": flip}}
    run = tlmulti.train(image_recipe(tiny_backbone, train, data=data,
                                     phases=[{"name": "head", "epochs": 3, "learning_rate": 0.01}]),
                        out=tmp_path / "run")
    result = CliRunner().invoke(main, ["vision", "evaluate", str(run.dir), "--data", str(test), "--tta", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{"):])
    plain = CliRunner().invoke(main, ["vision", "evaluate", str(run.dir), "--data", str(test), "--json"]).output
    assert metrics["without_tta"]["loss"] == pytest.approx(json.loads(plain[plain.index("{"):])["loss"], rel=1e-5)
    assert metrics["loss"] != pytest.approx(metrics["without_tta"]["loss"], rel=1e-9)  # the flip did something
    assert metrics["tta"]["views"] == "identity, horizontal flip" and metrics["tta"]["seconds"] > 0
    assert "With test-time augmentation: accuracy" in result.output
    assert ("trained without flips" in result.output) == (flip == "none")


def test_tasks_without_views_refuse_tta_in_one_line():
    from types import SimpleNamespace

    from tlmulti.cli.common import tta_axes
    from tlmulti.errors import TlmultiError

    task = SimpleNamespace(tta_output=None)
    recipe = SimpleNamespace(task="text_classification")
    with pytest.raises(TlmultiError, match="--tta applies to image classification.*'runs/t' is text_classification"):
        tta_axes("runs/t", recipe, task)
