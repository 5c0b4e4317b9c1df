"""``tlmulti runs list|compare`` (tables read from run folders) and ``tlmulti ui`` (the MLflow UI
over the embedded tracking store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from tlmulti.cli.common import user_errors
from tlmulti.errors import RunError


def _cell(value, width: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return (text if len(text) <= width else text[:width - 1] + "~").ljust(width)


@click.group()
def runs():
    """Tables of run folders: what ran, with which strategy, and how well."""


@runs.command("list")
@click.argument("root", default="runs", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, one per line.")
@user_errors
def runs_list(root, as_json):
    """Runs under ROOT (default: runs), oldest first: status, task, backbone, strategy, the
    headline metric on validation and test, the classic baseline's test value, seconds."""
    from tlmulti.reports.catalog import find_runs, summary

    if not Path(root).is_dir():
        raise RunError(f"Folder '{root}' does not exist; give the folder your runs are in (default: runs).")
    rows = [summary(p) for p in find_runs(root)]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo(f"No run folders (with a run.json) under '{root}'.")
        return
    columns = [("run", 28), ("status", 11), ("task", 22), ("backbone", 22), ("strategy", 22), ("metric", 12),
               ("val", 8), ("test", 8), ("baseline", 9), ("seconds", 8)]
    click.echo(" ".join(name.ljust(width) for name, width in columns).rstrip())
    for row in rows:
        shown = dict(row, run=str(Path(row["run"]).relative_to(root)) if row["run"] != str(root) else row["run"])
        click.echo(" ".join(_cell(shown[name], width) for name, width in columns).rstrip())
    beaten = [r for r in rows if r["baseline"] is not None and r["test"] is not None and r["baseline"] > r["test"]]
    if beaten:
        click.echo(f"{len(beaten)} of {len(rows)} runs lose to their classic baseline on test data.")


@runs.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@user_errors
def runs_compare(run_dirs):
    """RUN_DIRS side by side: summary, every validation and test metric, and the recipe keys that
    differ between them."""
    from tlmulti.reports.catalog import compare

    folders = [Path(d) for d in run_dirs]
    for folder in folders:
        if not (folder / "run.json").is_file():
            raise RunError(f"'{folder}' is not a run folder (it has no run.json); see 'tlmulti runs list'.")
    width = max(14, min(30, 100 // len(folders)))
    rows = compare(folders)
    label = max(len(name) for name, _ in rows) + 2
    names = [f.name for f in folders]
    if len(set(names)) < len(names):  # runs/a/run and runs/b/run: name them by their parent too
        names = [f"{f.resolve().parent.name}/{f.name}" for f in folders]
    click.echo("".ljust(label) + " ".join(_cell(n, width) for n in names).rstrip())
    for name, values in rows:
        click.echo(name.ljust(label) + " ".join(_cell(v, width) for v in values).rstrip())


@click.command("ui")
@click.option("--uri", help="Tracking store to browse (default: the embedded $TLMULTI_HOME/mlflow.db).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@user_errors
def ui(uri, host, port):
    """Browse tracked runs (--track) in the MLflow UI until Ctrl-C."""
    import importlib.util

    from tlmulti.training.tracking import artifact_root, default_uri

    if importlib.util.find_spec("mlflow") is None:
        raise RunError("The MLflow UI needs the mlflow package: pip install mlflow.")
    store = uri or default_uri()
    click.echo(f"MLflow UI for {store} at http://{host}:{port} (Ctrl-C stops it)", err=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", host,
               "--port", str(port)]
    if not uri:
        command += ["--default-artifact-root", artifact_root().as_uri()]
    try:
        code = subprocess.call(command)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise RunError(f"The MLflow server stopped with exit code {code} (is port {port} already in use? "
                       "try --port).")
