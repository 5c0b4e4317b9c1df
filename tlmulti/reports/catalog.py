"""Run folders as table rows: ``tlmulti runs list`` and ``tlmulti runs compare``, for users
without an experiment tracker. Everything is read from the folders (``run.json``,
``metrics.json``, ``recipe.yaml``); nothing is loaded or executed.

Example::

    rows = [summary(p) for p in find_runs("runs")]
    table = compare([Path("runs/a"), Path("runs/b")])
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

HEADLINES = ("accuracy", "macro_auroc", "mean_dice", "map50")  # the tasks' primary metrics
MAX_DEPTH = 3


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _recipe(run_dir: Path) -> dict:
    try:
        data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def find_runs(root) -> list[Path]:
    """Folders under ``root`` (``root`` itself included, at most three levels down) holding a
    ``run.json``, oldest first."""
    root = Path(root)
    found = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / "run.json").is_file():
            found.append(folder)
            return
        if depth < MAX_DEPTH:
            for child in sorted(folder.iterdir()):
                if child.is_dir() and not child.is_symlink() and child.name not in ("checkpoint", "logs"):
                    walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return sorted(found, key=lambda p: (_json(p / "run.json").get("started", ""), str(p)))


def headline_metric(metrics: dict) -> str | None:
    for name in HEADLINES:
        if any(isinstance((metrics.get(split) or {}).get(name), (int, float)) for split in ("test", "val")):
            return name
    return None


def strategy_of(metrics: dict, recipe: dict) -> str:
    if metrics.get("tune"):
        return f"tune: {metrics['tune'].get('trials')} trials"
    if metrics.get("strategy"):
        return f"auto: {metrics['strategy'].get('chosen')}"
    phases = recipe.get("phases") or []
    deepest = [p.get("unfreeze") for p in phases if isinstance(p, dict) and p.get("unfreeze") not in (None, [], "")]
    return f"fixed: {deepest[-1]}" if deepest else "fixed: probe"


def summary(run_dir: Path) -> dict:
    """One row: run, status, task, backbone, strategy, metric, val, test, baseline (test), seconds,
    started. Missing values are None."""
    info, metrics, recipe = _json(run_dir / "run.json"), _json(run_dir / "metrics.json"), _recipe(run_dir)
    metric = headline_metric(metrics)
    baseline = (metrics.get("baseline") or {}).get("test") or {}
    return {
        "run": str(run_dir), "status": info.get("status"), "task": info.get("task") or recipe.get("task"),
        "backbone": info.get("backbone"), "strategy": strategy_of(metrics, recipe) if recipe else None,
        "metric": metric, "val": (metrics.get("val") or {}).get(metric) if metric else None,
        "test": (metrics.get("test") or {}).get(metric) if metric else None,
        "baseline": baseline.get(metric) if metric else None,
        "seconds": (metrics.get("timing") or {}).get("total_seconds"), "started": info.get("started"),
    }


def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        items = enumerate(data)
    else:
        return {prefix: data}
    out = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def compare(run_dirs: list[Path]) -> list[tuple[str, list]]:
    """``(field, [value per run])`` rows: the summary, every scalar validation and test metric of
    any of the runs, and the recipe keys whose values differ between them."""
    summaries = [summary(d) for d in run_dirs]
    rows = [(k, [s[k] for s in summaries]) for k in ("status", "task", "backbone", "strategy", "seconds", "started")]
    metrics = [_json(d / "metrics.json") for d in run_dirs]
    for split in ("val", "test"):
        names = []
        for m in metrics:
            names += [k for k, v in (m.get(split) or {}).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in names]
        rows += [(f"{split}.{name}", [(m.get(split) or {}).get(name) for m in metrics]) for name in names]
    for name in HEADLINES:
        values = [((m.get("baseline") or {}).get("test") or {}).get(name) for m in metrics]
        if any(v is not None for v in values):
            rows.append((f"baseline.test.{name}", values))
    recipes = [_flat(_recipe(d)) for d in run_dirs]
    keys = []
    for r in recipes:
        keys += [k for k in r if k not in keys]
    for key in keys:
        values = [r.get(key) for r in recipes]
        if key != "name" and any(json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True,
                                                                                            default=str)
                                 for v in values):
            rows.append((f"recipe.{key}", values))
    return rows
