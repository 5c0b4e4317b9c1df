"""keras-hub DeepLabV3+ and SegFormer presets as tiny random configs saved to a local preset folder."""

from __future__ import annotations

import numpy as np
import pytest

import tlmulti
from tests.builders import write_seg_folder


@pytest.fixture
def seg_data(tmp_path):
    return {split: write_seg_folder(tmp_path / split, n, seed=k)
            for k, (split, n) in enumerate((("train", 2), ("val", 1), ("test", 1)))}


def _recipe(name, preset, data, *extra):
    return tlmulti.load_recipe(task="segmentation", overrides=[
        f"backbone.name={name}", f"backbone.weights={preset}", f"data.train={data['train']}",
        f"data.val={data['val']}", f"data.test={data['test']}", "data.tile=[32, 32]", "data.batch_size=4",
        "callbacks.verbose=0", "strategy=fixed", *extra])  # the phases as written, no search first


def _tiny_deeplab(path):
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 8],
        stackwise_num_blocks=[1, 1, 1], stackwise_num_strides=[1, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    model = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P4", upsampling_size=4, dilation_rates=[1, 2],
        low_level_feature_key="P2", projection_filters=8)
    model.save_to_preset(str(path))
    return path


def _tiny_segformer(path):
    import keras_hub

    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 1], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2], hidden_dims=[8, 16],
        image_shape=(32, 32, 3))
    keras_hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=8).save_to_preset(str(path))
    return path


def test_deeplab_trains_decoder_then_encoder_and_reloads(seg_data, tmp_path):
    from tlmulti.runs import load_run

    preset = _tiny_deeplab(tmp_path / "preset")
    recipe = _recipe("deeplab_v3_plus_resnet50.pascalvoc", preset, seg_data,
                     "phases.0.epochs=1", "phases.1.epochs=1", "phases.1.unfreeze=[encoder]")
    run = tlmulti.train(recipe, out=tmp_path / "run")
    phases = run.metrics["phases"]
    assert phases[0]["feature_cache"] and phases[0]["unfrozen_groups"] == []
    assert phases[1]["unfrozen_groups"] == ["encoder"] and not phases[1]["feature_cache"]
    assert "mean_dice" in run.metrics["test"]
    _, task, model = load_run(run.dir)
    out = np.asarray(model.predict(np.zeros((1, 40, 36, 3), "uint8"), verbose=0))
    assert out.shape == (1, 40, 36, 2)


def test_segformer_groups_head_and_reload(seg_data, tmp_path):
    from tlmulti.runs import load_run
    from tlmulti.training.trainer import make_task

    preset = _tiny_segformer(tmp_path / "preset")
    recipe = _recipe("segformer_b0.ade20k", preset, seg_data, "phases.0.epochs=1", "phases.1.epochs=0")
    task = make_task(recipe)
    task.classes = ["background", "nucleus"]
    parts = task.build(task.classes)
    assert list(parts.groups) == ["encoder", "decoder"]
    assert [l.name for l in parts.groups["encoder"]][0].startswith("functional")
    assert parts.head.output.shape == (None, 32, 32, 2)  # SegFormer's 1/4 map resized by the head
    run = tlmulti.train(recipe, out=tmp_path / "run")
    _, _, model = load_run(run.dir)
    assert np.asarray(model.predict(np.zeros((1, 32, 32, 3), "uint8"), verbose=0)).shape == (1, 32, 32, 2)
