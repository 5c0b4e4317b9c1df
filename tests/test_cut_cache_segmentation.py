"""The cut cache for segmentation (tlmulti/training/cut.py with a multi-output encoder): the skip
features below the cut cached with it, each flip and quarter turn of a tile cached as a view with
its mask turned alike, the same weights as end to end, and the fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from tests.builders import assert_same_weights, assert_weights_changed, build_parts, seg_recipe, values, \
    write_seg_folder


@pytest.fixture
def seg_data(tmp_path):
    return {split: write_seg_folder(tmp_path / split, n, seed=k)
            for k, (split, n) in enumerate((("train", 4), ("val", 2), ("test", 2)))}


def _recipe(backbone, data, cache="auto", flip="none", rot90="false", **extra):
    recipe = seg_recipe(backbone, data, **{"data.augment.flip": flip, "data.augment.rot90": rot90,
                                           "phases.1.cache_features": cache, "phases.1.learning_rate": 0.05,
                                           **extra})
    recipe.cache.dtype = "float32"
    return recipe


def _fine_tune(recipe):
    """The second phase alone (the decoder as built), after the same seed: (parts, record, before)."""
    import keras

    from tlmulti.training.trainer import fine_tune

    task, parts, train, val = build_parts(recipe)
    task.classes = list(train.classes)
    recipe.phases = recipe.phases[1:]
    before = values(parts.backbone.weights + parts.head.weights)
    keras.utils.set_random_seed(1)
    _, records = fine_tune(parts, task, train, val, recipe)
    return parts, records[0], before


def _weights(parts):
    return values(parts.backbone.weights + parts.head.weights)


def test_the_cut_caches_the_skips_below_it_and_trains_the_same_weights(tiny_backbone, seg_data):
    cut_parts, cut, before = _fine_tune(_recipe(tiny_backbone, seg_data, "auto"))
    e2e_parts, e2e, _ = _fine_tune(_recipe(tiny_backbone, seg_data, False))
    record = cut["cut_cache"]
    assert record["used"] is True, record
    # top:1 unfreezes block3: its input and the two finer skips are cut, computed once
    assert record["cut_after"] == ["block1_relu", "block2_relu", "block2_pool"]
    assert record["shapes"] == [[16, 16, 4], [8, 8, 8], [4, 4, 8]] and record["views"] == 1
    assert e2e["cut_cache"] == {"used": False, "reason": "cache_features: false"}
    assert cut["trainable_params"] == e2e["trainable_params"] > 0
    assert_weights_changed(before, _weights(cut_parts))
    assert_same_weights(_weights(e2e_parts), _weights(cut_parts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flip, rot90, tile, views", [
    ("both", "true", "[16, 16]", 8), ("none", "true", "[16, 16]", 4), ("horizontal", "true", "[16, 16]", 8),
    ("both", "false", "[16, 16]", 4), ("both", "true", "[16, 8]", 4), ("none", "false", "[16, 16]", 1)])
def test_the_views_are_the_distinct_symmetries_the_augmentation_draws(flip, rot90, tile, views, tiny_backbone,
                                                                      seg_data):
    from tlmulti.training.trainer import make_task

    recipe = _recipe(tiny_backbone, seg_data, flip=flip, rot90=rot90, **{"data.tile": tile, "data.tile_stride": tile})
    task = make_task(recipe)
    parts = task.build(["background", "nucleus"])
    found, others, paired = task.cut_views(parts)
    assert len(found) == views and found[0] == (False, False, 0) and paired and not others
    probe = np.arange(16 * (16 if tile == "[16, 16]" else 8)).reshape(16, -1)
    turned = {np.rot90(probe[::-1 if v else 1, ::-1 if h else 1], k).tobytes() for v, h, k in found}
    assert len(turned) == views  # all distinct


def test_each_cached_view_is_the_cut_of_the_turned_tile_with_its_turned_mask(tiny_backbone, seg_data):
    from tlmulti.data.pipeline import make_epoch_dataset
    from tlmulti.training import cut as cut_cache
    from tlmulti.training.freezing import resolve_unfreeze

    recipe = _recipe(tiny_backbone, seg_data, flip="both", rot90="true")
    task, parts, train, val = build_parts(recipe)
    cut, record = cut_cache.plan(parts, task, recipe.phases[1], resolve_unfreeze("top:1", list(parts.groups), "x"))
    assert record["views"] == 8
    x_train, _, _ = cut_cache.cached_inputs(cut, (train, val), recipe, "ft", 0)
    n = len(train)
    model = cut.feature_model()
    images, masks = np.asarray(train.x), np.asarray(train.y)
    for v, (vertical, horizontal, k) in enumerate(cut.flips):
        turned = np.rot90(images[:, ::-1 if vertical else 1, ::-1 if horizontal else 1], k, axes=(1, 2))
        expected = model.predict(np.ascontiguousarray(turned), verbose=0)
        for cached, want in zip(x_train.rows, expected):
            np.testing.assert_allclose(np.asarray(cached[v * n:(v + 1) * n]), want, atol=1e-5)
        mask = np.rot90(masks[:, ::-1 if vertical else 1, ::-1 if horizontal else 1], k, axes=(1, 2))
        np.testing.assert_array_equal(np.stack([x_train.targets[v * n + i] for i in range(n)]), mask)
    # an epoch reads each example once, in one of its views, with that view's mask
    (xs, ys), = make_epoch_dataset(x_train, train.y, 64, seed=0, epochs=1).take(1)
    assert len(ys) == n
    for skip, y in zip(np.asarray(xs[0]), np.asarray(ys)):
        rows = [v * n + i for v in range(8) for i in range(n)
                if np.allclose(np.asarray(x_train.rows[0][v * n + i]), skip, atol=1e-6)]
        assert rows and all(np.array_equal(x_train.targets[r], y) for r in rows)


def test_brightness_falls_back_to_end_to_end_unless_caching_is_forced(tiny_backbone, seg_data):
    _, auto, _ = _fine_tune(_recipe(tiny_backbone, seg_data, "auto", flip="both",
                                    **{"data.augment.brightness": 0.1}))
    assert auto["cut_cache"]["used"] is False
    assert "other than flips and quarter turns" in auto["cut_cache"]["reason"]
    _, forced, _ = _fine_tune(_recipe(tiny_backbone, seg_data, "true", flip="both",
                                      **{"data.augment.brightness": 0.1}))
    assert forced["cut_cache"]["used"] is True and forced["cut_cache"]["views"] == 4  # flips, no turns


def test_the_input_image_as_a_skip_is_cut_too(seg_data):
    from tests.builders import register_tiny_half
    from tlmulti import registry

    register_tiny_half("tiny_half.test")
    try:
        cut_parts, cut, _ = _fine_tune(_recipe("tiny_half.test", seg_data, "auto", **{"head.image_skip": "true"}))
        e2e_parts, _, _ = _fine_tune(_recipe("tiny_half.test", seg_data, False, **{"head.image_skip": "true"}))
    finally:
        registry.unregister_backbone("tiny_half.test")
    assert cut["cut_cache"]["used"] is True
    assert cut["cut_cache"]["shapes"][-1] == [16, 16, 3]  # the preprocessed tile, read by the decoder
    assert_same_weights(_weights(e2e_parts), _weights(cut_parts), rtol=1e-4, atol=1e-5)


def test_a_default_run_trains_its_fine_tuning_on_the_views_and_saves_the_whole_model(tiny_backbone, seg_data,
                                                                                    tmp_path):
    import json

    import tlmulti

    recipe = seg_recipe(tiny_backbone, seg_data)  # flip: both, rot90: true, cache_features: auto
    run = tlmulti.train(recipe, out=tmp_path / "run")
    phases = json.loads((run.dir / "metrics.json").read_text())["phases"]
    assert phases[1]["cut_cache"]["used"] is True and phases[1]["cut_cache"]["views"] == 8
    model = tlmulti.load_model(run.dir)
    image = np.random.default_rng(0).integers(0, 255, (1, 24, 20, 3)).astype("uint8")
    assert np.asarray(model.predict(image, verbose=0)).shape == (1, 24, 20, 2)
