"""``--tune``: an Optuna study in the run folder, pruning after each epoch, resumable after a kill,
and a best trial that the saved recipe trains without tuning."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.builders import image_recipe, write_image_folder

ROOT = Path(__file__).resolve().parent.parent


def _recipe(backbone, train, trials, **over):
    recipe = image_recipe(backbone, train, phases=[
        {"name": "head", "epochs": 3, "learning_rate": 0.01},
        {"name": "finetune", "epochs": 2, "learning_rate": 0.003, "unfreeze": "top:1"}])
    recipe.tune.trials = trials
    for key, value in over.items():
        setattr(recipe, key, value)
    return recipe


def _trials(run_dir: Path) -> list[dict]:
    with open(run_dir / "tune.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_of_four_trials_trains_its_best_and_saves_a_recipe_without_tuning(tiny_backbone, tmp_path):
    import optuna

    import tlmulti
    from tlmulti.recipe import load_recipe

    train = write_image_folder(tmp_path / "images", per_class=12, size=(16, 16))
    recipe = _recipe(tiny_backbone, train, 4)
    recipe.output.plots = True
    run = tlmulti.train(recipe, out=tmp_path / "run")
    record = run.metrics["tune"]
    rows = _trials(run.dir)
    assert len(rows) == 4 == record["trials"] and record["complete"] + record["pruned"] == 4
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run.dir / 'tune.db'}")
    assert study.best_trial.number == record["best"]["number"]
    assert record["best"]["val"] == pytest.approx(max(float(r["value"]) for r in rows if r["value"]))
    params = json.loads(rows[record["best"]["number"]]["params"])
    assert {"head_learning_rate", "weight_decay", "label_smoothing", "dropout", "depth"} <= set(params)
    saved = load_recipe(run.dir / "recipe.yaml")
    assert saved.tune.trials == 0 and saved.strategy == "fixed"
    assert saved.optimizer.weight_decay == pytest.approx(params["weight_decay"])
    if params["depth"] == "probe":
        assert len(saved.phases) == 1
    else:
        assert saved.phases[-1].learning_rate == pytest.approx(params["learning_rate"])
        assert saved.phases[-1].epochs == params["epochs"]
    assert "Tuning (Optuna)" in (run.dir / "report.html").read_text()
    assert not record["importances"] or (run.dir / "tune_importance.png").is_file()


def test_pruning_stops_a_trial_after_its_first_epoch(tiny_backbone, tmp_path):
    """A pruner that prunes any value below a threshold no loss reaches: the trial ends pruned
    after one epoch of its frozen phase instead of running all ten."""
    import optuna

    from tests.builders import build_parts
    from tlmulti.training.trainer import fine_tune
    from tlmulti.training.tune import _Pruning

    recipe = image_recipe(tiny_backbone, write_image_folder(tmp_path / "i", per_class=8),
                          phases=[{"name": "head", "epochs": 10, "learning_rate": 0.01}])
    task, parts, train, val = build_parts(recipe)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    epochs = []

    def objective(trial):
        history, _ = fine_tune(parts, task, train, val, recipe, callbacks=[_Pruning(trial)])
        epochs.append(len(history))
        return 0.0

    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert epochs == []  # fit never returned
    assert list(study.trials[0].intermediate_values) == [0]


_KILLED = """
import sys
sys.path.insert(0, {root!r})
from tests.builders import image_recipe, register_tiny_cnn
import tlmulti
recipe = image_recipe(register_tiny_cnn(), {train!r}, phases=[
    {{"name": "head", "epochs": 3, "learning_rate": 0.01}},
    {{"name": "finetune", "epochs": 2, "learning_rate": 0.003, "unfreeze": "top:1"}}])
recipe.tune.trials = 3
tlmulti.train(recipe, out={out!r})
"""


@pytest.mark.slow
def test_a_killed_study_resumes_with_the_trials_it_lacks(tmp_path):
    """The tuning process is killed (SIGKILL) once the first trial is in tune.csv; 'tlmulti resume'
    on the folder continues the study: trial 0 is kept as it was, three trials end complete or
    pruned in all, and the run finishes."""
    from click.testing import CliRunner

    from tests.builders import register_tiny_cnn
    from tlmulti.cli import main

    train = write_image_folder(tmp_path / "images", per_class=12, size=(16, 16))
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED.format(root=str(ROOT), train=str(train), out=str(out))],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in (out / "tune.csv", *out.glob("*/tune.csv")) if p.is_file()] if out.exists() else []
        if found and len(_trials(found[0].parent)) >= 1:
            run_dir = found[0].parent
            break
        time.sleep(0.2)
    assert run_dir is not None, "the first trial never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _trials(run_dir)[0]
    register_tiny_cnn()
    result = CliRunner().invoke(main, ["resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    rows = _trials(run_dir)
    assert rows[0]["params"] == first["params"] and rows[0]["value"] == first["value"]
    assert sum(r["state"] in ("complete", "pruned") for r in rows) == 3
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert json.loads((run_dir / "metrics.json").read_text())["tune"]["complete"] >= 1


def test_an_unreachable_study_storage_is_one_line_and_leaves_no_folder(tiny_backbone, tmp_path):
    from click.testing import CliRunner

    from tlmulti.cli import main

    train = write_image_folder(tmp_path / "images", per_class=6)
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--backbone", tiny_backbone,
                                       "--tune", "2", "--set", "tune.storage=postgresql://me:secret@127.0.0.1:1/db",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "Key 'tune.storage': Optuna cannot open the study" in result.output
    assert "secret" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
