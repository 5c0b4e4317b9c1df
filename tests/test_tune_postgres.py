"""``tune.storage: postgresql://...``: two tuning processes share one study on a real PostgreSQL
server. The fixture installs PostgreSQL with apt-get when this machine lacks it (root), creates a
throw-away cluster under /tmp owned by the ``postgres`` user with trust authentication,
starts it on a free localhost port, and stops and removes it after the test."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.builders import write_image_folder

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    if _bin("initdb") is None:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql",
                       shell=True, check=True, timeout=900)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="tlmulti-pg-", dir="/tmp"))
    os.chmod(data, 0o700)
    if as_postgres:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*as_postgres, _bin("initdb"), "-D", str(data), "-U", "tlmulti", "--auth=trust"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*as_postgres, _bin("pg_ctl"), "-D", str(data), "-w", "-l", str(data / "server.log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True,
                   timeout=120)
    try:
        subprocess.run([*as_postgres, _bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tlmulti", "tune"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://tlmulti@127.0.0.1:{port}/tune"
    finally:
        subprocess.run([*as_postgres, _bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


_WORKER = """
import sys
sys.path.insert(0, {root!r})
from tests.builders import image_recipe, register_tiny_cnn
import tlmulti
recipe = image_recipe(register_tiny_cnn(), {train!r}, phases=[
    {{"name": "head", "epochs": 3, "learning_rate": 0.01}},
    {{"name": "finetune", "epochs": 2, "learning_rate": 0.003, "unfreeze": "top:1"}}])
recipe.name = "shared"
recipe.tune.trials = 6
recipe.tune.storage = {url!r}
tlmulti.train(recipe, out={out!r})
"""


def test_two_processes_share_one_study_on_postgresql(postgres_url, tmp_path):
    import optuna

    train = write_image_folder(tmp_path / "images", per_class=12, size=(16, 16))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER.format(root=str(ROOT), train=str(train), url=postgres_url,
                                                                    out=str(tmp_path / f"run{i}"))],
                              env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert 6 <= len(finished) <= 7  # each worker stops once six are done; one may be running then
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    for i in range(2):
        record = json.loads((tmp_path / f"run{i}" / "metrics.json").read_text())["tune"]
        assert record["storage"] == postgres_url  # no password in this URL to hide
        assert record["best"]["val"] <= study.best_value + 1e-9
