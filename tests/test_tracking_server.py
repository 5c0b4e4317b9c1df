"""A real MLflow tracking server on a localhost port, started with ``tlmulti ui`` and stopped after
the test: a run logs to it over HTTP and reads back through MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.builders import image_recipe, write_image_folder

pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tlmulti_home):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "tlmulti", "ui", "--port", str(port)],
                               env={**os.environ, "TLMULTI_HOME": str(tlmulti_home)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"tlmulti ui did not start: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_run_logs_to_a_server_over_http(server, tiny_backbone, tmp_path, tlmulti_home):
    from mlflow import MlflowClient

    import tlmulti

    train = write_image_folder(tmp_path / "images", per_class=8, size=(16, 16))
    recipe = image_recipe(tiny_backbone, train, phases=[{"name": "head", "epochs": 3, "learning_rate": 0.01}],
                          tracking={"backend": "mlflow", "uri": server, "experiment": "team"})
    run = tlmulti.train(recipe, out=tmp_path / "run")
    info = json.loads((run.dir / "run.json").read_text())
    assert info["mlflow_uri"] == server
    client = MlflowClient(tracking_uri=server)
    logged = client.get_run(info["mlflow_run_id"])
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "team"
    assert logged.data.params["phases.0.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val_loss")] == [1, 2, 3]
    assert logged.data.metrics["val.accuracy"] == pytest.approx(run.metrics["val"]["accuracy"])
    assert {"recipe.yaml", "metrics.json"} <= {a.path for a in client.list_artifacts(logged.info.run_id)}
    # the server keeps its runs in the embedded store that 'tlmulti ui' browses by default
    assert (tlmulti_home / "mlflow.db").is_file()
