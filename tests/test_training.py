"""The shared trainer: freezing by groups, BatchNorm policy, feature cache, LR multipliers, failed runs
(a whole run folder, for every task: tests/test_trainer_tasks.py)."""

import numpy as np
import pytest

from tests.builders import assert_same_weights, assert_weights_changed, build_parts, image_recipe, values
from tlmulti.errors import RecipeError


def _weights(layers):
    return values(w for l in layers for w in l.weights)


def test_unfreeze_makes_exactly_named_groups_trainable(tiny_backbone, image_folder):
    from tlmulti.training.freezing import resolve_unfreeze, set_trainable

    task, parts, _, _ = build_parts(image_recipe(tiny_backbone, image_folder))
    names = list(parts.groups)
    assert names == ["block1", "block2", "block3"]
    assert resolve_unfreeze("top:2", names) == ["block2", "block3"]
    assert resolve_unfreeze(["block3", "block1"], names) == ["block1", "block3"]
    set_trainable(parts.backbone, parts.groups, ["block3"], "frozen")
    trainable = {l.name for l in parts.backbone.layers if l.trainable_weights}
    assert trainable == {"block3_conv"}  # BatchNorm stays frozen under the default policy
    set_trainable(parts.backbone, parts.groups, ["block3"], "train")
    trainable = {l.name for l in parts.backbone.layers if l.trainable_weights}
    assert trainable == {"block3_conv", "block3_bn"}
    set_trainable(parts.backbone, parts.groups, [], "frozen")
    assert parts.backbone.trainable_weights == []
    with pytest.raises(RecipeError, match="unknown layer group 'block4'.*Did you mean"):
        resolve_unfreeze(["block4"], names)
    with pytest.raises(RecipeError, match="top 5 groups"):
        resolve_unfreeze("top:5", names)


def test_batchnorm_train_policy_updates_statistics(tiny_backbone, image_folder):
    from tlmulti.training.trainer import fine_tune

    recipe = image_recipe(tiny_backbone, image_folder,
                     phases=[{"epochs": 1, "learning_rate": 0.05, "unfreeze": ["block3"], "batchnorm": "train"}])
    task, parts, train, val = build_parts(recipe)
    bn = parts.backbone.get_layer("block3_bn")
    mean_before = np.array(bn.moving_mean)
    fine_tune(parts, task, train, val, recipe)
    assert not np.allclose(mean_before, np.array(bn.moving_mean))


def test_group_learning_rates_scale_updates(tiny_backbone, image_folder):
    from tlmulti.training.trainer import fine_tune

    recipe = image_recipe(tiny_backbone, image_folder, phases=[
        {"epochs": 1, "learning_rate": 0.05, "unfreeze": "top:2", "group_lr": {"block2": 0.0}}])
    task, parts, train, val = build_parts(recipe)
    get = parts.backbone.get_layer
    b2, b3 = _weights([get("block2_conv")]), _weights([get("block3_conv")])
    _, records = fine_tune(parts, task, train, val, recipe)
    assert_same_weights(b2, _weights([get("block2_conv")]))
    assert_weights_changed(b3, _weights([get("block3_conv")]))
    assert records[0]["group_lr"] == {"block3": 0.05, "block2": 0.0}


def test_lr_decay_gives_lower_groups_smaller_rates():
    from tlmulti.training.freezing import group_multipliers

    groups = {"a": [1], "b": [2], "c": [3]}
    assert group_multipliers(groups, ["a", "b", "c"], lr_decay=0.5) == {"c": 1.0, "b": 0.5, "a": 0.25}


def test_feature_cache_equals_uncached_training(tiny_backbone, image_folder):
    import keras

    from tlmulti.training.trainer import fine_tune

    heads = []
    for cache in (True, False):
        recipe = image_recipe(tiny_backbone, image_folder,
                         phases=[{"epochs": 3, "learning_rate": 0.05, "cache_features": cache}])
        recipe.cache.dtype = "float32"  # exact: float16 storage is tested against this below
        task, parts, train, val = build_parts(recipe)
        keras.utils.set_random_seed(1)
        fine_tune(parts, task, train, val, recipe)
        heads.append(_weights(parts.head.layers))
    assert_same_weights(*heads, rtol=1e-4, atol=1e-5)


def test_float16_feature_cache_trains_the_head_within_tolerance(tiny_backbone, image_folder):
    import keras

    from tlmulti.training.trainer import fine_tune

    heads = []
    for dtype in ("float32", "float16"):
        recipe = image_recipe(tiny_backbone, image_folder, phases=[{"epochs": 3, "learning_rate": 0.05}])
        recipe.cache.dtype = dtype
        task, parts, train, val = build_parts(recipe)
        keras.utils.set_random_seed(1)
        fine_tune(parts, task, train, val, recipe)
        heads.append(_weights(parts.head.layers))
    assert len(heads[0]) == len(heads[1]) and heads[0]
    diffs = [np.max(np.abs(a - b)) for a, b in zip(*heads)]
    assert 0 < max(diffs) < 2e-3  # stored at half precision (not bit-identical), trained the same


def test_failed_run_leaves_no_half_written_folder(tiny_backbone, tmp_path):
    import tlmulti
    from tlmulti.errors import DataError

    recipe = image_recipe(tiny_backbone, tmp_path / "missing")
    with pytest.raises(DataError, match="does not exist"):
        tlmulti.train(recipe, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_feature_cache_reports_progress_unless_quiet(tiny_backbone, image_folder, capsys):
    from tlmulti.training.trainer import fine_tune

    recipe = image_recipe(tiny_backbone, image_folder)
    task, parts, train, val = build_parts(recipe)
    fine_tune(parts, task, train, val, recipe)  # callbacks.verbose 0: nothing printed
    assert "backbone features" not in capsys.readouterr().out.lower()
    recipe.callbacks.verbose = 2
    fine_tune(parts, task, train, val, recipe)  # the same backbone and inputs: read back from disk
    out = capsys.readouterr().out
    assert f"Backbone features for the frozen phase: {len(train)} training and {len(val)} validation examples" in out
    assert f"Backbone features of {len(train)} examples read from the cache" in out
    recipe.cache.disk = False
    fine_tune(parts, task, train, val, recipe)
    out = capsys.readouterr().out
    assert "read from the cache" not in out and "Features ready in" in out
