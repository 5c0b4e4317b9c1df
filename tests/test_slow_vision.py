"""Real weights and the bundled image recipe (slow: run with `pytest -m slow`)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_default_image_recipe_transfers_with_real_weights(tmp_path):
    """The demo recipe on a small slice: the offline VGG16 must beat chance clearly, and the
    fine-tune phase must leave blocks 1-3 untouched while blocks 4-5 move."""
    import numpy as np

    import tlmulti
    from tlmulti.backbones import load_backbone

    recipe = tlmulti.load_recipe("recipes/vision/fashion_mnist.yaml", overrides=[
        "data.limit_per_class=100", "data.image_size=[32, 32]", "phases.0.epochs=10",
        "phases.1.epochs=1", "callbacks.verbose=0"])
    run = tlmulti.train(recipe, out=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 2000
    assert metrics["test"]["accuracy"] > 0.4  # 10 classes: chance is 0.1
    assert metrics["phases"][1]["unfrozen_groups"] == ["block4", "block5"]
    pretrained = load_backbone(tlmulti.get_backbone("vgg16.hed_bsds500"), input_shape=(32, 32, 3))
    tuned = run.model.get_layer("vgg16")
    for name, moved in (("block1_conv1", False), ("block3_conv3", False), ("block5_conv3", True)):
        same = np.array_equal(pretrained.get_layer(name).kernel.numpy(), tuned.get_layer(name).kernel.numpy())
        assert same != moved, name
