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


def test_augmentation_falls_back_to_end_to_end_unless_caching_is_forced(tiny_backbone, image_folder):
    recipe = _phase(tiny_backbone, image_folder, "top:1", "auto")
    recipe.data.augment.flip = "horizontal"
    _, record, _ = _fine_tune(recipe)
    assert record["cut_cache"]["used"] is False and "augmentation" in record["cut_cache"]["reason"]
    recipe = _phase(tiny_backbone, image_folder, "top:1", True)
    recipe.data.augment.flip = "horizontal"
    _, record, _ = _fine_tune(recipe)
    assert record["cut_cache"]["used"] is True


def test_a_cache_that_does_not_fit_the_disk_trains_end_to_end(tiny_backbone, image_folder, monkeypatch, capsys):
    from tlmulti.data import cache as disk

    monkeypatch.setattr(disk, "fits", lambda nbytes, base=None: False)
    _, record, _ = _fine_tune(_phase(tiny_backbone, image_folder, "top:1"))
    assert record["cut_cache"] == {"used": False, "reason": "the cut cache does not fit on the disk"}
    lines = [l for l in capsys.readouterr().out.splitlines() if "cut cache" in l]
    assert len(lines) == 1 and "training this phase end to end" in lines[0]


def test_backbones_without_a_single_cut_fall_back_with_the_reason():
    import keras

    from tlmulti.training.cut import find_cut

    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="low_a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="low_b")(a)
    top = keras.layers.Concatenate(name="top_cat")([a, b])
    out = keras.layers.Conv2D(4, 1, name="top_conv")(top)
    skip = keras.Model(inputs, out)
    layers = {l.name: l for l in skip.layers}
    tensor, _, reason = find_cut(skip, {"low": [layers["low_a"], layers["low_b"]],
                                        "top": [layers["top_cat"], layers["top_conv"]]}, ["top"])
    assert tensor is None and reason.startswith("2 tensors cross") and "low_a, low_b" in reason
    tensor, layer, reason = find_cut(skip, {"low": [layers["low_a"]], "top": [layers["low_b"], layers["top_cat"],
                                                                               layers["top_conv"]]}, ["top"])
    assert reason is None and layer.name == "low_a"  # one tensor feeding two unfrozen layers (a residual) is one cut
    tensor, layer, reason = find_cut(skip, {"all": [layers[n] for n in ("low_a", "low_b", "top_cat", "top_conv")]},
                                     ["all"])
    assert tensor is None and reason == "nothing is frozen below the lowest unfrozen group"

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    tensor, _, reason = find_cut(Subclassed(), {"all": []}, ["all"])
    assert tensor is None and reason == "the backbone is not a Keras functional graph"


def _run_recipe(backbone, data):
    from tlmulti.recipe import from_dict

    return from_dict({
        "task": "image_classification", "name": "t", "seed": 0, "deterministic": True,
        "backbone": {"name": backbone}, "head": {"pooling": "avg", "dropout": 0.0},
        "data": {"train": str(data), "test": str(data), "val_split": 0.25, "batch_size": 4, "image_size": [16, 16]},
        "phases": [{"name": "head", "epochs": 1, "learning_rate": 0.01},
                   {"name": "ft", "epochs": 3, "learning_rate": 0.01, "unfreeze": "top:1"}],
        "callbacks": {"early_stopping": {"patience": 5}, "verbose": 0}, "output": {"plots": False},
    })


class Crash(Exception):
    pass


@pytest.mark.parametrize("disk_full", [False, True], ids=["cache kept", "cache cleared and disk full"])
def test_resume_in_the_middle_of_a_cut_cached_phase_continues_it(disk_full, tiny_backbone, image_folder, tmp_path,
                                                                  monkeypatch):
    import tlmulti
    from tlmulti.data import cache as disk
    from tlmulti.training import checkpoints
    from tlmulti.training.trainer import resume

    reference = tlmulti.train(_run_recipe(tiny_backbone, image_folder), out=tmp_path / "reference")
    real, calls = checkpoints.save, []

    def crashing(*args, **kwargs):  # 1 start, 2 head epoch, 3 between phases, 4-6 ft epochs, 7 end
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            raise Crash("after the second epoch of the cut-cached phase")

    monkeypatch.setattr(checkpoints, "save", crashing)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        tlmulti.train(_run_recipe(tiny_backbone, image_folder), out=out)
    state = checkpoints.load_state(out)
    assert (state["phase"], state["epoch"], state["cut_cache"]) == (1, 2, True)
    monkeypatch.setattr(checkpoints, "save", real)
    if disk_full:  # the phase still continues on the cut (kept in memory), as its saved optimizer state needs
        disk.clear()
        monkeypatch.setattr(disk, "fits", lambda nbytes, base=None: False)
    run = resume(out)
    ft = run.metrics["phases"][1]
    assert ft["cut_cache"]["used"] is True and ft["cut_cache"]["cache_hits"] == [not disk_full] * 2
    assert not disk_full or disk.entries() == []
    assert [r["epoch"] for r in run.history] == [r["epoch"] for r in reference.history] == [1, 2, 3, 4]
    assert run.metrics["test"]["loss"] == pytest.approx(reference.metrics["test"]["loss"], abs=1e-5)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    loaded = tlmulti.load_model(out)  # the whole model, as end to end training saves it
    x = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), np.asarray(run.model.predict(x, verbose=0)),
                               atol=1e-5)
