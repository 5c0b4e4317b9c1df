"""Backbone sources, offline weight handling and saved backbones (all offline)."""

import numpy as np
import pytest
from click.testing import CliRunner

from tests.builders import assert_same_weights, build_tiny_cnn
from tlmulti import registry
from tlmulti.backbones import load_backbone, weights_status
from tlmulti.backbones.hed_vgg16 import weights_path as hed_weights_path
from tlmulti.cli import main
from tlmulti.errors import MissingWeightsError


def test_missing_offline_weights_error_names_backbone_and_ways_out():
    spec = registry.get_backbone("resnet50.imagenet")
    with pytest.raises(MissingWeightsError) as err:
        load_backbone(spec, input_shape=(32, 32, 3))
    msg = str(err.value)
    assert "resnet50.imagenet" in msg and "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "--weights PATH" in msg and "tlmulti weights import resnet50.imagenet" in msg
    assert weights_status(spec)[0] is False


def test_missing_keras_hub_preset_is_a_clear_error():
    spec = registry.get_backbone("resnet_50_imagenet.keras_hub")
    with pytest.raises(MissingWeightsError, match="resnet_50_imagenet.keras_hub.*Looked in"):
        load_backbone(spec)


def test_weights_path_that_does_not_exist(tmp_path):
    spec = registry.get_backbone("vgg16.imagenet")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_backbone(spec, weights=str(tmp_path / "nope.h5"), input_shape=(32, 32, 3))


def test_hed_vgg16_loads_bundled_weights_offline():
    import h5py

    spec = registry.get_backbone("vgg16.hed_bsds500")
    assert weights_status(spec)[0]
    model = load_backbone(spec, input_shape=(32, 32, 3))
    with h5py.File(hed_weights_path(), "r") as f:
        expected = f["block5/layers/conv2d_2/vars/0"][()]
    np.testing.assert_array_equal(model.get_layer("block5_conv3").kernel.numpy(), expected)
    random = load_backbone(spec, weights="random", input_shape=(32, 32, 3))
    assert not np.allclose(random.get_layer("block5_conv3").kernel.numpy(), expected)
    assert model.output.shape[1:] == (1, 1, 512)
    cut = load_backbone(spec, input_shape=(32, 32, 3), output_layer="block4_conv3")
    assert cut.output.shape[1:] == (4, 4, 512)


def test_weights_import_is_used_by_the_loader(tmp_path):
    import keras

    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_custom.weights.h5"
    source.save_weights(path)
    result = CliRunner().invoke(main, ["weights", "import", "vgg16.imagenet", str(path)])
    assert result.exit_code == 0, result.output
    spec = registry.get_backbone("vgg16.imagenet")
    assert weights_status(spec)[0]
    model = load_backbone(spec, input_shape=(32, 32, 3))
    np.testing.assert_array_equal(model.get_layer("block1_conv1").kernel.numpy(),
                                  source.get_layer("block1_conv1").kernel.numpy())
    again = CliRunner().invoke(main, ["weights", "import", "vgg16.imagenet", str(path)])
    assert again.exit_code == 2 and "--force" in again.output
    listing = CliRunner().invoke(main, ["weights", "list"])
    assert "vgg16.imagenet" in listing.output and "available" in listing.output


def test_keras_hub_local_preset_dir(tmp_path):
    import keras_hub

    tiny = keras_hub.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
                                         intermediate_dim=16, max_sequence_length=8)
    tiny.save_to_preset(str(tmp_path / "preset"))
    registry.register_backbone("tiny_bert.local", source="keras_hub", families=("text",),
                               handle=str(tmp_path / "preset"), options={"class": "BertBackbone"}, replace=True)
    try:
        model = load_backbone(registry.get_backbone("tiny_bert.local"))
        assert_same_weights(tiny.weights, model.weights)
    finally:
        registry.unregister_backbone("tiny_bert.local")


def test_saved_backbone_is_registered_by_name(tiny_backbone):
    import tlmulti

    model = build_tiny_cnn(None, None, (16, 16, 3))
    tlmulti.save_backbone(model, "tiny.saved", families=("vision",), input={"size": [16, 16], "channels": 3},
                          layer_groups={"top": ["block3_.*"]})
    registry.unregister_backbone("tiny.saved")
    registry._load_saved_backbones()  # as a new process would
    spec = registry.get_backbone("tiny.saved")
    assert spec.source == "local" and spec.layer_groups == {"top": ("block3_.*",)}
    loaded = load_backbone(spec)
    assert_same_weights(model.weights, loaded.weights)
    registry.unregister_backbone("tiny.saved")
