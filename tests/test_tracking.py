"""Experiment tracking in MLflow: the embedded SQLite store by default, nested runs for tuning
trials, a warning (not a failure) when the tracker cannot be reached."""

from __future__ import annotations

import json
import time

import pytest

from tests.builders import image_recipe, write_image_folder

pytest.importorskip("mlflow")


def _client(home):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def _tracked(backbone, train, **extra):
    recipe = image_recipe(backbone, train, phases=[
        {"name": "head", "epochs": 2, "learning_rate": 0.01},
        {"name": "finetune", "epochs": 2, "learning_rate": 0.003, "unfreeze": "top:1"}], **extra)
    recipe.tracking.backend = "mlflow"
    return recipe


def test_a_run_logs_its_recipe_every_epoch_its_results_and_its_files(tiny_backbone, tmp_path, tlmulti_home):
    import tlmulti

    train = write_image_folder(tmp_path / "images", per_class=8, size=(16, 16))
    test = write_image_folder(tmp_path / "test", per_class=4, size=(16, 16))
    recipe = _tracked(tiny_backbone, train, output={"plots": True})
    recipe.data.test = str(test)
    run = tlmulti.train(recipe, out=tmp_path / "run")
    client = _client(tlmulti_home)
    info = json.loads((run.dir / "run.json").read_text())
    logged = client.get_run(info["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert client.get_experiment(logged.info.experiment_id).name == "t"  # the recipe's name
    params = logged.data.params
    assert params["phases.1.learning_rate"] == "0.003" and params["phases.1.unfreeze"] == "top:1"
    assert params["backbone.name"] == tiny_backbone
    steps = client.get_metric_history(logged.info.run_id, "loss")
    assert [m.step for m in steps] == [1, 2, 3, 4]  # epochs counted across both phases
    history = [float(line.split(",")[header.index("loss")]) for header in
               [(run.dir / "history.csv").read_text().splitlines()[0].split(",")]
               for line in (run.dir / "history.csv").read_text().splitlines()[1:]]
    assert [m.value for m in steps] == pytest.approx(history, rel=1e-5)
    assert logged.data.tags["phase.finetune"] == "from epoch 3"
    metrics = logged.data.metrics
    assert metrics["test.accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert metrics["val.accuracy"] == pytest.approx(run.metrics["val"]["accuracy"])
    assert metrics["baseline.test.accuracy"] == pytest.approx(run.metrics["baseline"]["test"]["accuracy"])
    assert metrics["seconds.total_seconds"] > 0
    files = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"recipe.yaml", "metrics.json", "report.html", "history.csv", "curves.png"} <= files
    assert "model.keras" not in files and "model" not in files  # large: only with log_model
    artifacts = tlmulti_home / "mlartifacts"
    assert any(artifacts.rglob("metrics.json"))  # beside the store, not in the working directory


def test_a_tuning_study_logs_one_nested_run_per_trial(tiny_backbone, tmp_path, tlmulti_home):
    import tlmulti

    train = write_image_folder(tmp_path / "images", per_class=8, size=(16, 16))
    recipe = _tracked(tiny_backbone, train)
    recipe.tune.trials = 3
    recipe.tracking.experiment = "study"
    run = tlmulti.train(recipe, out=tmp_path / "run")
    client = _client(tlmulti_home)
    experiment = client.get_experiment_by_name("study")
    parent = json.loads((run.dir / "run.json").read_text())["mlflow_run_id"]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["trial 0", "trial 1", "trial 2"]
    best = run.metrics["tune"]["best"]
    chosen = next(r for r in children if r.info.run_name == f"trial {best['number']}")
    assert chosen.data.metrics[f"val.{run.metrics['tune']['metric']}"] == pytest.approx(best["val"])
    assert set(best["params"]) <= set(chosen.data.params)
    assert {r.data.tags["state"] for r in children} <= {"COMPLETE", "PRUNED"}
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}


def test_an_unreachable_server_warns_once_and_the_run_finishes(tiny_backbone, tmp_path, capfd):
    import tlmulti

    train = write_image_folder(tmp_path / "images", per_class=8, size=(16, 16))
    recipe = _tracked(tiny_backbone, train)
    recipe.tracking.uri = "http://127.0.0.1:9"  # the discard port: nothing listens
    start = time.perf_counter()
    run = tlmulti.train(recipe, out=tmp_path / "run")
    err = capfd.readouterr().err
    assert err.count("warning: tracking to http://127.0.0.1:9 failed") == 1
    assert (run.dir / "metrics.json").is_file() and run.metrics["val"]["accuracy"] >= 0
    assert "mlflow_run_id" not in json.loads((run.dir / "run.json").read_text())
    assert time.perf_counter() - start < 120


def test_a_resumed_run_continues_its_mlflow_run(tiny_backbone, tmp_path, tlmulti_home):
    import tlmulti

    train = write_image_folder(tmp_path / "images", per_class=8, size=(16, 16))
    recipe = _tracked(tiny_backbone, train)
    run = tlmulti.train(recipe, out=tmp_path / "run")
    run_id = json.loads((run.dir / "run.json").read_text())["mlflow_run_id"]
    client = _client(tlmulti_home)
    client.set_terminated(run_id, "KILLED")
    from tlmulti.training.tracking import Tracker

    tracker = Tracker(recipe.tracking)
    tracker.begin(recipe, run.dir)
    assert tracker.run_id == run_id and client.get_run(run_id).info.status == "RUNNING"
    tracker.end("FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_uri_without_a_backend_is_refused_naming_the_key(tiny_backbone, tmp_path):
    from tlmulti.errors import RecipeError

    with pytest.raises(RecipeError, match=r"tracking\.uri.*--track"):
        image_recipe(tiny_backbone, tmp_path, tracking={"uri": "http://host:5000"})


def test_the_flag_turns_tracking_on():
    from tlmulti.cli.flags import overrides_from_flags

    assert overrides_from_flags({"track": True}) == ['tracking.backend="mlflow"']


def test_the_model_is_logged_only_when_asked_and_loads_back(tiny_backbone, tmp_path, tlmulti_home):
    import mlflow
    import numpy as np

    import tlmulti

    train = write_image_folder(tmp_path / "images", per_class=8, size=(16, 16))
    recipe = _tracked(tiny_backbone, train)
    recipe.tracking.log_model = True
    run = tlmulti.train(recipe, out=tmp_path / "run")
    run_id = json.loads((run.dir / "run.json").read_text())["mlflow_run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{tlmulti_home / 'mlflow.db'}")
    try:
        loaded = mlflow.keras.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), run.model.predict(x, verbose=0), atol=1e-5)


def _finished_run(folder, task, metric, val, test, baseline=None, seconds=5.0, started="2026-01-01T00:00:00",
                  **recipe):
    import yaml

    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "finished", "task": task, "backbone": "b",
                                                 "started": started}))
    metrics = {"val": {metric: val}, "test": {metric: test, "n": 10}, "timing": {"total_seconds": seconds}}
    if baseline is not None:
        metrics["baseline"] = {"method": "m", "test": {metric: baseline}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"task": task, "phases": [{"name": "head"}], **recipe}))


def test_runs_list_reads_every_run_folder_and_flags_the_baseline(tmp_path):
    from click.testing import CliRunner

    from tlmulti.cli import main

    _finished_run(tmp_path / "runs" / "a", "image_classification", "accuracy", 0.9, 0.88, baseline=0.95,
                  started="2026-01-02T00:00:00")
    _finished_run(tmp_path / "runs" / "b", "segmentation", "mean_dice", 0.7, 0.71, started="2026-01-01T00:00:00")
    (tmp_path / "runs" / "c" / "checkpoint").mkdir(parents=True)  # not a run: no run.json
    result = CliRunner().invoke(main, ["runs", "list", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[:3] == ["b", "finished", "segmentation"] and "0.7100" in lines[1]  # oldest first
    assert lines[2].split()[0] == "a" and "0.8800" in lines[2] and "0.9500" in lines[2]
    assert "1 of 2 runs lose to their classic baseline" in result.output
    rows = [json.loads(line) for line in CliRunner().invoke(
        main, ["runs", "list", str(tmp_path / "runs"), "--json"]).output.splitlines()]
    assert [(r["metric"], r["test"]) for r in rows] == [("mean_dice", 0.71), ("accuracy", 0.88)]


def test_runs_compare_shows_metrics_and_only_the_recipe_keys_that_differ(tmp_path):
    from click.testing import CliRunner

    from tlmulti.cli import main

    for name, rate in (("x", 0.01), ("y", 0.001)):
        _finished_run(tmp_path / name / "run", "image_classification", "accuracy", 0.8, 0.7 + rate,
                      seed=0, optimizer={"learning_rate": rate})
    result = CliRunner().invoke(main, ["runs", "compare", str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")])
    assert result.exit_code == 0, result.output
    table = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert result.output.splitlines()[0].split() == ["x/run", "y/run"]
    assert table["recipe.optimizer.learning_rate"] == ["0.0100", "0.0010"]
    assert table["test.accuracy"] == ["0.7100", "0.7010"]
    assert "recipe.seed" not in table
    bad = CliRunner().invoke(main, ["runs", "compare", str(tmp_path)])
    assert bad.exit_code != 0 and "is not a run folder" in bad.output
