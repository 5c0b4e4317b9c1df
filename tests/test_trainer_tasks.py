"""The shared trainer on every registered task, on tiny models: the tests are parametrized over
``registry.list_tasks()``, each task's tiny backbone and data come from ``TASK_CASES`` in
``tests/builders.py``, so a new task is tested the moment it is registered (and fails until it
has an entry there).

For each task: a two-phase run end to end, in which the frozen head phase (on cached features)
changes the head and nothing of the backbone, BatchNorm statistics included, and the unfreeze
phase trains exactly the top group's layers with BatchNorm frozen under the default policy; then
the run folder, headline metric, report, reload and evaluate, predict. And a frozen phase without
the feature cache, which must leave the backbone as untouched."""

from __future__ import annotations

import json

import pytest

from tests.builders import (
    assert_same_weights, assert_weights_changed, registered_tasks, task_case, values, weights_changed,
)

TASKS = registered_tasks()
COMMON = {"callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False}, "seed": 0}


def _setup(case, phases):
    import keras

    from tlmulti.recipe import from_dict
    from tlmulti.tasks import make_task

    recipe = from_dict({**case.recipe, **COMMON, "phases": phases})
    keras.utils.set_random_seed(0)
    task = make_task(recipe)
    task.derive_defaults()
    train, val, _ = task.load_splits()
    task.classes = train.classes
    return recipe, task, task.build(train.classes), train, val


def _between_phases(monkeypatch):
    """Snapshots of the model parts' weights where the trainer checkpoints a run between phases
    (before the first, after each): {phase index: snapshot}. The real checkpoint is still written."""
    from tlmulti.training import checkpoints

    snaps = {}
    real = checkpoints.save

    def spy(run_dir, state, parts, *args, **kwargs):
        if state.get("epoch") == 0:
            layers = [l for g in parts.groups.values() for l in g if l.weights]
            snaps[state["phase"]] = {"parts": parts, "backbone": values(parts.backbone.weights),
                                     "head": values(parts.head.weights),
                                     "layers": {l.name: values(l.weights) for l in layers}}
        return real(run_dir, state, parts, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save", spy)
    return snaps


@pytest.mark.parametrize("task_name", TASKS)
def test_every_registered_task_trains_two_phases_end_to_end(task_name, task_case, tmp_path, monkeypatch):
    """A frozen head phase (on cached features), then the top group unfrozen: the head phase
    changes the head and nothing of the backbone, BatchNorm statistics included; the second
    trains exactly the top group's layers (BatchNorm frozen under the default policy). Then the
    run folder, the headline metric, the report, reload + evaluate, predict."""
    import tlmulti
    from tlmulti.errors import RunError
    from tlmulti.recipe import from_dict
    from tlmulti.runs import load_run
    from tlmulti.training.freezing import is_batchnorm

    recipe = from_dict({**task_case.recipe, **COMMON, "output": {"plots": True}, "evaluation": {"bootstrap": 0},
                        "phases": [{"name": "head", "epochs": 1, "learning_rate": 0.01},
                                   {"name": "top", "epochs": 1, "learning_rate": 0.001, "unfreeze": "top:1"}]})
    snaps = _between_phases(monkeypatch)
    run = tlmulti.train(recipe, out=tmp_path / "run")

    assert sorted(snaps) == [0, 1, 2], sorted(snaps)  # before training, after each phase
    parts = snaps[0]["parts"]
    groups = list(parts.groups)
    assert len(groups) >= 2, groups
    head, top = run.metrics["phases"]
    assert head["unfrozen_groups"] == [] and head["feature_cache"] is True
    assert_same_weights(snaps[0]["backbone"], snaps[1]["backbone"])  # kernels and BatchNorm moving statistics
    assert_weights_changed(snaps[0]["head"], snaps[1]["head"])
    assert top["unfrozen_groups"] == [groups[-1]] and top["batchnorm"] == "frozen"
    layers = [l for g in parts.groups.values() for l in g if l.weights]
    changed = {l.name for l in layers if weights_changed(snaps[1]["layers"][l.name], snaps[2]["layers"][l.name])}
    expected = {l.name for l in parts.groups[groups[-1]] if l.weights and not is_batchnorm(l)}
    assert changed == expected and expected  # the top group's layers, nothing else, no BatchNorm

    for name in ("model.keras", "recipe.yaml", "metrics.json", "run.json", "report.html", "history.csv",
                 "curves.png", "data_summary.json"):
        assert (run.dir / name).is_file(), name
    saved = json.loads((run.dir / "metrics.json").read_text())
    value = saved["test"][task_case.metric]
    assert isinstance(value, float) and 0 <= value <= 1, (task_case.metric, saved["test"])
    assert [p["unfrozen_groups"] for p in saved["phases"]] == [[], [groups[-1]]]
    assert len(saved["timing"]["phase_seconds"]) == 2
    lines = (run.dir / "history.csv").read_text().splitlines()
    assert lines[0].startswith("phase,epoch") and len(lines) == 3  # one epoch per phase
    assert run.headline and run.headline in (run.dir / "report.html").read_text()
    assert tlmulti.load_recipe(run.dir / "recipe.yaml").to_dict() == run.recipe.to_dict()  # the run as it ran
    with pytest.raises(RunError, match="already exists"):  # a run folder is never overwritten
        tlmulti.train(recipe, out=run.dir)
    assert (run.dir / "model.keras").is_file()
    if task_case.check_run is not None:
        task_case.check_run(run)

    _, task, model = load_run(run.dir)
    again = task.evaluate(model, task.read(task_case.test, classes=task.classes))
    assert again[task_case.metric] == pytest.approx(value, abs=1e-5)
    if "loss" in saved["test"]:
        assert again["loss"] == pytest.approx(saved["test"]["loss"], rel=1e-4, abs=1e-5)

    results = task.predict(model, task_case.predict)
    assert len(results) == len(task_case.predict)
    for result in results:
        task_case.check_prediction(result, task.classes)


def test_a_registered_task_without_a_tiny_case_fails_and_says_what_to_add(tmp_path):
    from tlmulti import registry

    assert set(TASKS) == {s.name for s in registry.list_tasks()} and len(TASKS) >= 5
    registry.register_task("untested.test", family="vision", implementation="tests.nowhere:Untested",
                           default_backbone="tiny_cnn.test")
    try:
        assert "untested.test" in registered_tasks()
        with pytest.raises(pytest.fail.Exception, match=r"Task 'untested.test' .*add its tiny data/backbone "
                                                        r"builder to TASK_CASES in tests/builders.py"):
            task_case("untested.test", tmp_path)
    finally:
        registry.unregister_task("untested.test")


@pytest.mark.parametrize("task_name", TASKS)
def test_uncached_frozen_phase_changes_the_head_and_nothing_of_the_backbone(task_name, task_case):
    """Without the feature cache the frozen backbone runs inside the trained model: it still
    changes nothing of it, BatchNorm statistics included (the cached path: the end-to-end test)."""
    from tlmulti.training.trainer import fine_tune

    recipe, task, parts, train, val = _setup(task_case, [{"epochs": 2, "learning_rate": 0.05, "cache_features": False}])
    before = values(parts.backbone.weights)  # kernels and BatchNorm moving statistics
    head_before = values(parts.head.weights)
    history, records = fine_tune(parts, task, train, val, recipe)
    assert records[0]["feature_cache"] is False and records[0]["unfrozen_groups"] == []
    assert_same_weights(before, parts.backbone.weights)
    assert_weights_changed(head_before, parts.head.weights)
    assert len(history) == 2
