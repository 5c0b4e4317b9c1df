"""Experiment tracking: every run, strategy candidate and tuning trial in MLflow.

``tracking: {backend: mlflow}`` (``--track``) gives each tlmulti run one MLflow run: the
resolved recipe as parameters (flattened keys, ``phases.1.learning_rate``), the Keras metrics of
every epoch (step = epoch counted across phases; tag ``phase.<name>`` says where each phase
starts), the final validation, test, baseline and calibration numbers (``val.accuracy``,
``test.accuracy``, ``baseline.test.accuracy``, ...), the candidates of ``strategy: auto`` and the
trials of ``--tune`` as nested runs, and the run folder's small files as artifacts (recipe.yaml,
metrics.json, report.html, MODEL_CARD.md, the plots, tune.csv); the model itself only with
``tracking.log_model: true``.

Where: ``tracking.uri`` if set (``http://host:5000`` for a team server), else the environment's
``MLFLOW_TRACKING_URI``, else the embedded store ``sqlite:///$TLMULTI_HOME/mlflow.db`` with
artifacts in ``$TLMULTI_HOME/mlartifacts`` (``tlmulti ui`` browses it). The experiment is
``tracking.experiment``, default the recipe's name.

The run folder stays the source of truth. A tracker that cannot be reached or fails prints one
warning line and the run goes on untracked: a server is probed once with a 3 s timeout, and
MLflow's HTTP retries are turned off unless the environment sets them. The MLflow run's id is
kept in ``run.json`` so ``tlmulti resume`` continues the same MLflow run.

Example::

    with tracking.session(recipe.tracking) as tracker:
        tracker.begin(recipe, run_dir)
        fine_tune(..., callbacks=tracker.callbacks())
        tracker.finish(run_dir, metrics, model)
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tlmulti import paths, runs

ARTIFACTS = ("recipe.yaml", "metrics.json", "report.html", "MODEL_CARD.md", "history.csv", "tune.csv",
             "data_summary.json", "splits.csv", "export.json")
MAX_ARTIFACT_BYTES = 50 * 2**20
PARAM_CHARS = 500  # MLflow's smallest limit on a parameter's value across its stores
_NAME = re.compile(r"[^\w\-./ ]")


def default_uri() -> str:
    return f"sqlite:///{paths.home() / 'mlflow.db'}"


def artifact_root() -> Path:
    return paths.home() / "mlartifacts"


def resolve_uri(config) -> str:
    return config.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def shown(uri: str) -> str:
    """``uri`` without a password (``http://user:secret@host`` -> ``http://user:***@host``)."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", uri)


def flatten(data, prefix: str = "") -> dict:
    """Nested mappings and lists -> ``{"a.b.0.c": value}``."""
    out = {}
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        return {prefix: data}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, (dict, list)) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def numbers(data: dict, prefix: str) -> dict[str, float]:
    """The finite numbers of a nested mapping (lists left out: bins, curves, matrices), by
    metric-safe flattened name."""
    out = {}
    for key, value in (data or {}).items():
        name = _NAME.sub("_", f"{prefix}.{key}")
        if isinstance(value, dict):
            out.update(numbers(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class Tracker:
    """Logs one tlmulti run to MLflow; every call is a no-op when tracking is off or has failed."""

    def __init__(self, config, chief: bool = True):
        self.config = config
        self.enabled = config.backend == "mlflow" and chief
        self.uri = resolve_uri(config) if self.enabled else ""
        self.client = None
        self.run_id = None
        self.experiment_id = None
        self.failed = False

    # ---------------------------------------------------------------- plumbing
    def _call(self, what: str, fn, *args):
        if not self.enabled or self.failed:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # a tracker never fails the run: one line, then untracked
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            print(f"warning: tracking to {shown(self.uri)} failed while {what} ({first}); the run goes on "
                  "without tracking.", file=sys.stderr, flush=True)
            self.failed = True
            return None

    def _connect(self):
        import logging

        for name in ("alembic", "mlflow"):  # schema migrations and store notices: not the user's business
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.uri.startswith(("http://", "https://")):
            import urllib.request

            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=3).close()
        elif self.uri == default_uri():
            paths.home().mkdir(parents=True, exist_ok=True)
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise RuntimeError("the mlflow package is not installed: pip install mlflow") from None
        return MlflowClient(tracking_uri=self.uri)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = artifact_root().as_uri() if self.uri == default_uri() else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it a moment ago
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log(self, run_id: str, metrics=(), params=(), tags=(), step: int = 0) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in dict(metrics).items()]
        params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in dict(params).items()]
        tags = [RunTag(k, str(v)[:5000]) for k, v in dict(tags).items()]
        for i in range(0, max(len(metrics), len(params), len(tags)), 100):  # the REST API's batch limits
            self.client.log_batch(run_id, metrics[i:i + 100], params[i:i + 100], tags[i:i + 100])

    # ---------------------------------------------------------------- the run
    def begin(self, recipe, run_dir: Path) -> None:
        """Open (or, for a resumed run, reopen) the MLflow run; its id goes into ``run.json``."""
        self._call("starting the run", self._begin, recipe, Path(run_dir))

    def _begin(self, recipe, run_dir: Path) -> None:
        self.client = self._connect()
        info = runs.read_info(run_dir)
        self.experiment_id = self._experiment(self.config.experiment or recipe.name)
        if info.get("mlflow_run_id") and info.get("mlflow_uri") == shown(self.uri):
            self.run_id = info["mlflow_run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name, tags={
            "tlmulti.run_dir": str(run_dir.resolve()), "tlmulti.task": recipe.task,
            "tlmulti.backbone": recipe.backbone.name, "mlflow.source.name": "tlmulti"})
        self.run_id = run.info.run_id
        self._log(self.run_id, params=flatten(recipe.to_dict()))
        runs.set_status(run_dir, "running", mlflow_run_id=self.run_id, mlflow_uri=shown(self.uri),
                        mlflow_experiment=self.experiment_id)

    def callbacks(self) -> tuple:
        """The Keras callback that logs every epoch's metrics (none when not tracking)."""
        if self.run_id is None or self.failed:
            return ()
        return (_epoch_logger(self),)

    def finish(self, run_dir: Path, metrics: dict, model=None) -> None:
        """Final metrics, nested runs, artifacts (and the model if asked); the run ends FINISHED."""
        if self.run_id is None:
            return
        self._call("logging the results", self._finish, Path(run_dir), metrics, model)
        self.end("FINISHED")

    def _finish(self, run_dir: Path, metrics: dict, model) -> None:
        final = {}
        for section in ("val", "test", "calibration", "adaptation"):
            final.update(numbers(metrics.get(section), section))
        baseline = metrics.get("baseline") or {}
        final.update(numbers({"val": baseline.get("val"), "test": baseline.get("test")}, "baseline"))
        final.update(numbers(metrics.get("timing"), "seconds"))
        self._log(self.run_id, metrics=final, tags={"tlmulti.status": "finished"})
        if metrics.get("strategy"):
            self._strategy_runs(metrics["strategy"])
        if metrics.get("tune"):
            self._trial_runs(run_dir / "tune.csv", metrics["tune"]["metric"])
        for path in sorted({*(run_dir / n for n in ARTIFACTS), *run_dir.glob("*.png")}):
            if path.is_file() and path.stat().st_size <= MAX_ARTIFACT_BYTES:
                self.client.log_artifact(self.run_id, str(path))
        if model is not None and self.config.log_model:
            self._log_model(model)

    def _nested(self, name: str, params: dict, metrics: dict, tags: dict, status: str) -> None:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.run_id, **tags})
        self._log(run.info.run_id, metrics=metrics, params=params)
        self.client.set_terminated(run.info.run_id, status)

    def _strategy_runs(self, record: dict) -> None:
        metric = record.get("metric", "val")
        for row in record.get("candidates", []):
            done = "val" in row
            self._nested(row["name"], {"changes": "; ".join(row.get("changes", [])) or "as written"},
                         {f"val.{metric}": row["val"], "seconds": row["seconds"]} if done else {},
                         {"tlmulti.kind": "strategy candidate", "chosen": str(row["name"] == record.get("chosen")),
                          **({} if done else {"skipped": row.get("skipped", "")})},
                         "FINISHED" if done else "KILLED")

    def _trial_runs(self, table: Path, metric: str) -> None:
        if not table.is_file():
            return
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            values = {f"val.{metric}": float(row["value"])} if row.get("value") else {}
            if row.get("seconds"):
                values["seconds"] = float(row["seconds"])
            state = row.get("state", "").upper()
            self._nested(f"trial {row['number']}", json.loads(row.get("params") or "{}"), values,
                         {"tlmulti.kind": "tuning trial", "state": state},
                         {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))

    def _log_model(self, model) -> None:
        import keras
        import mlflow
        import tensorflow as tf

        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            with mlflow.start_run(run_id=self.run_id):
                mlflow.keras.log_model(model, name="model", pip_requirements=[
                    f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", "tlmulti"])
        finally:
            mlflow.set_tracking_uri(previous)

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self._call("ending the run", self.client.set_terminated, self.run_id, status)
            self.run_id = None


def _epoch_logger(tracker: Tracker):
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """Each epoch's logs as MLflow metrics at step ``epochs before this phase + epoch``."""

        epoch0 = 0

        def begin_phase(self, name: str, epoch0: int) -> None:
            self.epoch0 = epoch0
            tracker._call("logging a phase", tracker._log, tracker.run_id, (), (),
                          {f"phase.{name}": f"from epoch {epoch0 + 1}"})

        def on_epoch_end(self, epoch, logs=None):
            values = {}
            for key, value in (logs or {}).items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    values[key] = value
            tracker._call("logging an epoch", tracker._log, tracker.run_id, values, (), (), self.epoch0 + epoch + 1)

    return EpochLogger()


@contextmanager
def session(config, chief: bool = True):
    """A :class:`Tracker` whose MLflow run ends KILLED on Ctrl-C and FAILED on an error."""
    tracker = Tracker(config, chief)
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
