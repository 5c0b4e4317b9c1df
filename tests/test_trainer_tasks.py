"""The shared trainer's freezing contract, checked for every kind of task on tiny models.

For each task: a frozen phase (with and without the feature cache) changes the head and nothing
of the backbone, BatchNorm statistics included; an unfreeze phase trains exactly the named
group's layers, and BatchNorm stays frozen under the default policy.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.audio_helpers import write_tones
from tests.conftest import write_image_folder
from tests.test_segmentation_task import write_seg_folder

COMMON = {"callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False}, "seed": 0}


def _image(tmp_path, backbone):
    return {"task": "image_classification", "backbone": {"name": backbone},
            "head": {"pooling": "avg", "dropout": 0.0},
            "data": {"train": str(write_image_folder(tmp_path / "img")), "val_split": 0.25, "batch_size": 4,
                     "image_size": [16, 16]}}


def _segmentation(tmp_path, backbone):
    return {"task": "segmentation", "backbone": {"name": backbone}, "head": {"decoder_filters": [8, 8]},
            "data": {"train": str(write_seg_folder(tmp_path / "seg_train", 3)),
                     "val": str(write_seg_folder(tmp_path / "seg_val", 1, seed=1)),
                     "tile": [16, 16], "tile_stride": [8, 8], "batch_size": 8}}


def _speech(tmp_path, backbone):
    return {"task": "speech_classification", "backbone": {"name": "audio_cnn.scratch"},
            "head": {"pooling": "avg", "dropout": 0.0},
            "data": {"train": str(write_tones(tmp_path / "tones")), "val_split": 0.25, "batch_size": 4,
                     "clip_seconds": 0.4, "features": {"n_mels": 16}}}


CASES = {"image_classification": _image, "segmentation": _segmentation, "speech_classification": _speech}
# (top group, a lower group): layer names of the backbones used above
LAYERS = {"image_classification": ("block3", "block1"), "segmentation": ("block3", "block1"),
          "speech_classification": ("block4", "block1")}


def _setup(task_name, tmp_path, backbone, phases):
    import keras

    from tlmulti.recipe import from_dict
    from tlmulti.tasks import make_task

    recipe = from_dict({**CASES[task_name](tmp_path, backbone), **COMMON, "phases": phases})
    keras.utils.set_random_seed(0)
    task = make_task(recipe)
    train, val, _ = task.load_splits()
    task.classes = train.classes
    return recipe, task, task.build(train.classes), train, val


def _values(weights):
    return [np.array(w) for w in weights]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("task_name", list(CASES))
def test_frozen_phase_changes_the_head_and_nothing_of_the_backbone(task_name, cache, tiny_backbone, tmp_path):
    from tlmulti.training.trainer import fine_tune

    recipe, task, parts, train, val = _setup(task_name, tmp_path, tiny_backbone,
                                             [{"epochs": 2, "learning_rate": 0.05, "cache_features": cache}])
    before = _values(parts.backbone.weights)  # kernels and BatchNorm moving statistics
    head_before = _values(parts.head.weights)
    history, records = fine_tune(parts, task, train, val, recipe)
    assert records[0]["feature_cache"] is cache and records[0]["unfrozen_groups"] == []
    assert all(np.array_equal(a, b) for a, b in zip(before, _values(parts.backbone.weights)))
    assert any(not np.array_equal(a, b) for a, b in zip(head_before, _values(parts.head.weights)))
    assert len(history) == 2


@pytest.mark.parametrize("task_name", list(CASES))
def test_unfreeze_phase_trains_exactly_the_named_group(task_name, tiny_backbone, tmp_path):
    from tlmulti.training.freezing import is_batchnorm
    from tlmulti.training.trainer import fine_tune

    top, low = LAYERS[task_name]
    recipe, task, parts, train, val = _setup(task_name, tmp_path, tiny_backbone,
                                             [{"epochs": 1, "learning_rate": 0.05, "unfreeze": "top:1"}])
    assert list(parts.groups)[-1] == top and low in parts.groups
    layers = [l for g in parts.groups.values() for l in g if l.weights]
    snap = {l.name: _values(l.weights) for l in layers}
    _, records = fine_tune(parts, task, train, val, recipe)
    assert records[0]["unfrozen_groups"] == [top]
    changed = {l.name for l in layers if any(not np.array_equal(a, b) for a, b in zip(snap[l.name], _values(l.weights)))}
    expected = {l.name for l in parts.groups[top] if l.weights and not is_batchnorm(l)}
    assert changed == expected and expected  # the top group's convolutions, nothing else, no BatchNorm
