"""Fine-tuning on a cached cut (tlmulti/training/cut.py): the frozen part below the unfrozen
groups computed once; the same weights as end to end, a key per cut point, BatchNorm below the
cut untouched, resume, and the fallbacks recorded in the phase record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders import assert_same_weights, assert_weights_changed, build_parts, image_recipe, values


def _phase(backbone, folder, unfreeze="top:1", cache="auto", **extra):
    phase = {"name": "ft", "epochs": 1, "learning_rate": 0.05, "unfreeze": unfreeze, "cache_features": cache}
    phase.update(extra.pop("phase", {}))
    recipe = image_recipe(backbone, folder, phases=[phase], **extra)
    recipe.cache.dtype = "float32"
    return recipe


def _fine_tune(recipe):
    import keras

    from tlmulti.training.trainer import fine_tune

    task, parts, train, val = build_parts(recipe)
    before = values(parts.backbone.weights + parts.head.weights)
    keras.utils.set_random_seed(1)
    _, records = fine_tune(parts, task, train, val, recipe)
    return parts, records[0], before


def _all_weights(parts):
    return values(parts.backbone.weights + parts.head.weights)


def test_cut_cache_trains_the_same_weights_as_end_to_end(tiny_backbone, image_folder):
    cut_parts, cut_record, before = _fine_tune(_phase(tiny_backbone, image_folder, "top:1", "auto"))
    e2e_parts, e2e_record, _ = _fine_tune(_phase(tiny_backbone, image_folder, "top:1", False))
    assert cut_record["cut_cache"]["used"] is True
    assert cut_record["cut_cache"]["cut_after"] == ["block2_pool"]
    assert cut_record["cut_cache"]["cache_hits"] == [False, False] and cut_record["cut_cache"]["cache_seconds"] >= 0
    assert e2e_record["cut_cache"] == {"used": False, "reason": "cache_features: false"}
    assert cut_record["trainable_params"] == e2e_record["trainable_params"] > 0
    assert_weights_changed(before, _all_weights(cut_parts))
    assert_same_weights(_all_weights(e2e_parts), _all_weights(cut_parts), rtol=1e-4, atol=1e-5)


def test_the_cache_key_follows_the_cut_point_and_is_reused(tiny_backbone, image_folder):
    _, top1, _ = _fine_tune(_phase(tiny_backbone, image_folder, "top:1"))
    _, top2, _ = _fine_tune(_phase(tiny_backbone, image_folder, "top:2"))
    _, again, _ = _fine_tune(_phase(tiny_backbone, image_folder, "top:1", phase={"learning_rate": 0.01}))
    assert top2["cut_cache"]["cut_after"] == ["block1_pool"]
    keys1, keys2 = top1["cut_cache"]["cache_keys"], top2["cut_cache"]["cache_keys"]
    assert len(set(keys1 + keys2)) == 4  # train and val, for each cut
    assert again["cut_cache"]["cache_keys"] == keys1 and again["cut_cache"]["cache_hits"] == [True, True]


def test_batchnorm_below_the_cut_does_not_move(tiny_backbone, image_folder):
    recipe = _phase(tiny_backbone, image_folder, "top:1", phase={"batchnorm": "train"})
    task, parts, _, _ = build_parts(recipe)
    bns = [parts.backbone.get_layer(f"block{i}_bn") for i in (1, 2, 3)]
    stats = [values([bn.moving_mean, bn.moving_variance]) for bn in bns]
    parts, record, _ = _fine_tune(recipe)
    bns = [parts.backbone.get_layer(f"block{i}_bn") for i in (1, 2, 3)]
    assert record["cut_cache"]["used"] is True
    for bn, before in zip(bns[:2], stats[:2]):
        assert_same_weights(before, [bn.moving_mean, bn.moving_variance])
    assert_weights_changed(stats[2], [bns[2].moving_mean, bns[2].moving_variance])  # above the cut: trains


def test_augmentation_other_than_flips_falls_back_to_end_to_end_unless_caching_is_forced(tiny_backbone,
                                                                                         image_folder):
    recipe = _phase(tiny_backbone, image_folder, "top:1", "auto")
    recipe.data.augment.flip, recipe.data.augment.rotate = "horizontal", 0.1
    _, record, _ = _fine_tune(recipe)
    assert record["cut_cache"]["used"] is False and "augmentation other than flips" in record["cut_cache"]["reason"]
    recipe = _phase(tiny_backbone, image_folder, "top:1", True)
    recipe.data.augment.flip, recipe.data.augment.rotate = "horizontal", 0.1
    _, record, _ = _fine_tune(recipe)
    assert record["cut_cache"]["used"] is True and record["cut_cache"]["views"] == 2  # the flips, not the turns


def test_a_horizontal_flip_trains_on_two_cached_views(tiny_backbone, image_folder):
    recipe = _phase(tiny_backbone, image_folder, "top:1", "auto")
    recipe.data.augment.flip = "horizontal"
    parts, record, before = _fine_tune(recipe)
    assert record["cut_cache"]["used"] is True and record["cut_cache"]["views"] == 2
    assert record["cut_cache"]["cut_after"] == ["block2_pool"] and record["cut_cache"]["cache_hits"] == [False, False]
    assert_weights_changed(before, _all_weights(parts))
    _, plain, _ = _fine_tune(_phase(tiny_backbone, image_folder, "top:1", "auto"))
    assert plain["cut_cache"]["views"] == 1
    assert plain["cut_cache"]["cache_keys"][1] == record["cut_cache"]["cache_keys"][1]  # validation: as it is
    assert plain["cut_cache"]["cache_keys"][0] != record["cut_cache"]["cache_keys"][0]


@pytest.mark.parametrize("flip, flips", [("horizontal", [(False, False), (False, True)]),
                                         ("both", [(False, False), (False, True), (True, False), (True, True)])])
def test_the_cached_views_are_the_cut_of_the_flipped_images(flip, flips, tiny_backbone, image_folder):
    from tlmulti.data.pipeline import Views
    from tlmulti.training.cut import cached_inputs, plan

    recipe = _phase(tiny_backbone, image_folder, "top:1", "auto")
    recipe.data.augment.flip = flip
    task, parts, train, val = build_parts(recipe)
    cut, record = plan(parts, task, recipe.phases[0], ["block3"])
    assert cut.flips == flips and record["views"] == len(flips)
    x_train, x_val, info = cached_inputs(cut, (train, val), recipe, "ft", verbose=0)
    assert isinstance(x_train, Views) and x_train.views == len(flips) and len(x_train) == len(train)
    assert info["hits"] == [False, False]
    model, n, images = cut.feature_model(), len(train), np.asarray(train.x)
    for v, (vertical, horizontal) in enumerate(flips):
        flipped = images[:, ::-1 if vertical else 1, ::-1 if horizontal else 1]
        expected = np.asarray(model.predict(flipped, verbose=0))
        np.testing.assert_allclose(np.asarray(x_train.rows[v * n:(v + 1) * n]), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(x_train.rows[:n], x_train.rows[n:2 * n])  # the flips differ
    np.testing.assert_allclose(np.asarray(x_val), np.asarray(model.predict(np.asarray(val.x), verbose=0)),
                               rtol=1e-5, atol=1e-5)
    again = cached_inputs(cut, (train, val), recipe, "ft", verbose=0)
    assert again[2]["hits"] == [True, True] and again[2]["keys"] == info["keys"]


def _drawn_views(n, views, seed, epochs, initial_epoch=0):
    """Per epoch, the view read for each of ``n`` examples (rows hold their own row number)."""
    from tlmulti.data.pipeline import Views, make_epoch_dataset

    rows = np.arange(views * n, dtype="float32")[:, None]
    ds = make_epoch_dataset(Views(rows, views), np.arange(n, dtype="int32"), 4, seed=seed, epochs=epochs,
                            initial_epoch=initial_epoch)
    batches = [(x.numpy()[:, 0].astype(int), y.numpy()) for x, y in ds]
    read, labels = (np.concatenate(b) for b in zip(*batches))
    assert np.array_equal(read % n, labels)  # each row's targets are its example's
    out = np.zeros((epochs - initial_epoch, n), dtype=int)
    for k, epoch in enumerate(read.reshape(epochs - initial_epoch, n)):
        assert sorted(epoch % n) == list(range(n))  # every example once per epoch
        out[k, epoch % n] = epoch // n
    return out


def test_each_epoch_draws_one_view_per_example_uniformly_and_reproducibly():
    two = _drawn_views(64, 2, seed=3, epochs=20)
    assert 0.45 < two.mean() < 0.55 and all(0.1 < m < 0.9 for m in two.mean(axis=0))  # Bernoulli(0.5) each
    assert all(0.25 < m < 0.75 for m in two.mean(axis=1))  # every epoch mixes both views
    assert np.array_equal(_drawn_views(64, 2, seed=3, epochs=5), two[:5])  # the same seed draws the same
    assert np.array_equal(_drawn_views(64, 2, seed=3, epochs=20, initial_epoch=17), two[17:])  # resumed
    assert not np.array_equal(_drawn_views(64, 2, seed=4, epochs=3), two[:3])
    four = _drawn_views(64, 4, seed=0, epochs=10)
    assert all(0.2 < np.mean(four == v) < 0.3 for v in range(4))


def _run_recipe(backbone, data, flip="none"):
    from tlmulti.recipe import from_dict

    return from_dict({
        "task": "image_classification", "name": "t", "seed": 0, "deterministic": True,
        "backbone": {"name": backbone}, "head": {"pooling": "avg", "dropout": 0.0},
        "data": {"train": str(data), "test": str(data), "val_split": 0.25, "batch_size": 4, "image_size": [16, 16],
                 "augment": {"flip": flip}},
        "phases": [{"name": "head", "epochs": 1, "learning_rate": 0.01},
                   {"name": "ft", "epochs": 3, "learning_rate": 0.01, "unfreeze": "top:1"}],
        "callbacks": {"early_stopping": {"patience": 5}, "verbose": 0}, "output": {"plots": False},
    })


class Crash(Exception):
    pass


@pytest.mark.parametrize("disk_full, flip", [(False, "none"), (True, "none"), (False, "horizontal")],
                         ids=["cache kept", "cache cleared and disk full", "flip views"])
def test_resume_in_the_middle_of_a_cut_cached_phase_continues_it(disk_full, flip, tiny_backbone, image_folder,
                                                                  tmp_path, monkeypatch):
    import tlmulti
    from tlmulti.data import cache as disk
    from tlmulti.training import checkpoints
    from tlmulti.training.trainer import resume

    reference = tlmulti.train(_run_recipe(tiny_backbone, image_folder, flip), out=tmp_path / "reference")
    real, calls = checkpoints.save, []

    def crashing(*args, **kwargs):  # 1 start, 2 head epoch, 3 between phases, 4-6 ft epochs, 7 end
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            raise Crash("after the second epoch of the cut-cached phase")

    monkeypatch.setattr(checkpoints, "save", crashing)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        tlmulti.train(_run_recipe(tiny_backbone, image_folder, flip), out=out)
    state = checkpoints.load_state(out)
    assert (state["phase"], state["epoch"], state["cut_cache"]) == (1, 2, True)
    monkeypatch.setattr(checkpoints, "save", real)
    if disk_full:  # the phase still continues on the cut (kept in memory), as its saved optimizer state needs
        disk.clear()
        monkeypatch.setattr(disk, "fits", lambda nbytes, base=None: False)
    run = resume(out)
    ft = run.metrics["phases"][1]
    assert ft["cut_cache"]["used"] is True and ft["cut_cache"]["cache_hits"] == [not disk_full] * 2
    assert ft["cut_cache"]["views"] == (2 if flip == "horizontal" else 1)
    assert reference.metrics["phases"][1]["cut_cache"]["views"] == ft["cut_cache"]["views"]
    assert not disk_full or disk.entries() == []
    assert [r["epoch"] for r in run.history] == [r["epoch"] for r in reference.history] == [1, 2, 3, 4]
    assert run.metrics["test"]["loss"] == pytest.approx(reference.metrics["test"]["loss"], abs=1e-5)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    loaded = tlmulti.load_model(out)  # the whole model, as end to end training saves it
    x = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), np.asarray(run.model.predict(x, verbose=0)),
                               atol=1e-5)
