"""Multi-worker training: two worker processes on localhost ports, started as a user would
(``TF_CONFIG`` + ``tlmulti run``), against the same recipe in one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.builders import build_tiny_cnn, image_recipe, write_image_folder


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tlmulti(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "tlmulti", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A saved tiny backbone in a fresh TLMULTI_HOME, an image folder, a recipe."""
    import tlmulti

    monkeypatch.setenv("TLMULTI_HOME", str(tmp_path / "home"))
    tlmulti.save_backbone(build_tiny_cnn(None, None, (16, 16, 3)), "tiny_cnn.saved", families=("vision",),
                          input={"size": [16, 16], "channels": 3, "normalization": "unit"},
                          layer_groups={f"block{i}": [f"block{i}_.*"] for i in (1, 2, 3)})
    data = write_image_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=15, size=(16, 16))
    recipe = {
        "task": "image_classification", "name": "mw", "seed": 3, "distribute": "multi_worker",
        "backbone": {"name": "tiny_cnn.saved"},
        "head": {"pooling": "avg", "hidden": [16], "dropout": 0.0},
        "data": {"train": str(data), "val_split": 0.25, "batch_size": 8, "streaming": True},
        "phases": [{"name": "head", "epochs": 6, "learning_rate": 0.05, "unfreeze": "none"},
                   {"name": "top", "epochs": 2, "learning_rate": 0.01, "unfreeze": "top:1"}],
        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 2},
        "output": {"plots": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TLMULTI_HOME=str(tmp_path / "home"), PYTHONPATH=os.getcwd(), TF_CPP_MIN_LOG_LEVEL="2")
    return path, env


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_two_workers_train_like_one_process_and_only_the_chief_writes(setup, tmp_path):
    recipe, env = setup
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(2):
        worker_env = {**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(_tlmulti(["run", str(recipe), "--out", str(tmp_path / f"out{i}")], worker_env))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=400)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    assert "Run folder:" in outputs[0]
    assert "Worker 1 of 2 finished training; the chief writes the run folder." in outputs[1]
    assert not (tmp_path / "out1").exists()  # the other worker wrote nothing there
    chief = _metrics(tmp_path / "out0")

    # each worker computed frozen-phase features only for its shard (training 33 -> 17 + 16,
    # validation 12 -> 6 + 6), in the cache they share here, and so did the top phase's cut cache
    from tlmulti.data import cache

    described = [json.loads((cache.root() / e / "meta.json").read_text())["description"]
                 for e in os.listdir(cache.root()) if not e.startswith(".")]
    assert sorted(d["examples"] for d in described if "cut" not in d) == [6, 6, 16, 17]
    assert sorted(d["examples"] for d in described if "cut" in d) == [6, 6, 16, 17]

    single = _tlmulti(["run", str(recipe), "--out", str(tmp_path / "single"), "--set", "distribute=default"], env)
    out = single.communicate(timeout=400)[0]
    assert single.returncode == 0, out[-4000:]
    alone = _metrics(tmp_path / "single")
    assert chief["data"] == alone["data"]  # the whole training set on each side, not a shard
    assert alone["val"]["accuracy"] > 0.6  # learnable, so the comparison means something
    # same global batch and steps, another order of examples: the same result within noise
    assert abs(chief["val"]["accuracy"] - alone["val"]["accuracy"]) <= 0.09  # 1 of 12 validation images
    assert chief["val"]["loss"] < 0.5 and alone["val"]["loss"] < 0.5  # both far below ln 3 = 1.10 at the start
    assert abs(chief["val"]["loss"] - alone["val"]["loss"]) <= 0.15
    assert [r["epochs_run"] for r in chief["phases"]] == [6, 2]
    assert chief["phases"][1]["cut_cache"]["used"] and alone["phases"][1]["cut_cache"]["used"]


def test_multi_worker_without_tf_config_says_what_to_set(setup):
    recipe, env = setup
    p = _tlmulti(["run", str(recipe)], env)
    out = p.communicate(timeout=120)[0]
    assert p.returncode != 0
    assert "distribute: multi_worker needs TF_CONFIG" in out and "Traceback" not in out


def test_tpu_without_a_tpu_says_what_to_set(monkeypatch):
    from tlmulti.errors import RecipeError
    from tlmulti.training.distribute import get_strategy

    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(RecipeError, match="distribute: tpu found no TPU .*Set TPU_NAME"):
        get_strategy("tpu")


def test_a_multi_worker_run_is_not_resumed(tiny_backbone, tmp_path):
    import tlmulti
    from tlmulti import runs
    from tlmulti.errors import RunError
    from tlmulti.training.trainer import resume

    recipe = image_recipe(tiny_backbone, write_image_folder(tmp_path / "im", per_class=6))
    run = tlmulti.train(recipe, out=tmp_path / "run")
    runs.set_status(run.dir, "interrupted")  # as a chief stopped by Ctrl-C would leave it
    (run.dir / "checkpoint").mkdir()
    text = (run.dir / "recipe.yaml").read_text()
    (run.dir / "recipe.yaml").write_text(text.replace("distribute: auto", "distribute: multi_worker"))
    with pytest.raises(RunError, match="trained by several workers.*start the run again on every worker"):
        resume(run.dir)
    assert not (run.dir / runs._MARKER).exists()
