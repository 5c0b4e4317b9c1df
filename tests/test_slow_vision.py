"""Real weights and the bundled image recipe (slow: run with `pytest -m slow`)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_default_image_recipe_transfers_with_real_weights(tmp_path):
    """The demo recipe on a small slice: the offline EfficientNet-Lite0 must beat chance clearly,
    and the fine-tune phase (top:3) must leave the stem and early stages untouched while the last
    stages move."""
    import keras
    import numpy as np

    import tlmulti
    from tlmulti.backbones import load_backbone

    recipe = tlmulti.load_recipe("recipes/vision/fashion_mnist.yaml", overrides=[
        "data.limit_per_class=100", "data.image_size=[64, 64]", "phases.0.epochs=10",
        "phases.1.epochs=1", "callbacks.verbose=0", "output.plots=false"])
    run = tlmulti.train(recipe, out=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 2000
    assert metrics["test"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert metrics["phases"][1]["unfrozen_groups"] == ["stage6", "stage7", "head"]
    pretrained = load_backbone(tlmulti.get_backbone("efficientnet_lite0.imagenet"), input_shape=(64, 64, 3))
    tuned = next(layer for layer in run.model.layers
                 if isinstance(layer, keras.Model) and any(sub.name == "stem_conv" for sub in layer.layers))
    for name, moved in (("stem_conv", False), ("block3a_project_conv", False), ("block7a_project_conv", True)):
        same = np.array_equal(pretrained.get_layer(name).kernel.numpy(), tuned.get_layer(name).kernel.numpy())
        assert same != moved, name


def test_adaptation_auto_on_the_other_scanner_shift(tmp_path):
    """The other-scanner recipe on a slice, with the offline Lite0: every candidate is scored on
    the labelled shifted test images (which adaptation never sees); auto must not lose more than
    a point against source-only, and the BatchNorm methods must recover a clear part of the shift."""
    import keras

    import tlmulti
    from tlmulti import runs
    from tlmulti.tasks import make_task
    from tlmulti.training.adaptation import adapt
    from tlmulti.training.trainer import fine_tune

    recipe = runs.absolute_paths(tlmulti.load_recipe("recipes/vision/fashion_scanner_shift.yaml", overrides=[
        "data.limit_per_class=60", "data.image_size=[64, 64]", "phases.0.epochs=10", "phases.1.epochs=1",
        "adaptation.epochs=2", "adaptation.candidates=[adabn, test_time_bn, entropy]", "callbacks.verbose=0"]))
    keras.utils.set_random_seed(0)
    task = make_task(recipe)
    train, val, test = task.load_splits()
    task.classes = train.classes
    parts = task.build(train.classes)
    fine_tune(parts, task, train, val, recipe)
    scores = {}

    def each(name):
        scores[name] = task.evaluate(parts.assemble(augment=False), test)["accuracy"]

    report = adapt(parts, task, train, val, recipe, each=each)
    assert set(scores) == {"none", "adabn", "test_time_bn", "entropy"}
    assert scores[report["chosen"]] >= scores["none"] - 0.01, (report["chosen"], scores)
    assert max(scores["adabn"], scores["test_time_bn"]) >= scores["none"] + 0.05, scores
