"""Run folders: created once, never overwritten, and everything needed to reuse a model.

A run folder holds ``model.keras`` (the inference model, preprocessing included),
``recipe.yaml`` (the resolved recipe: ``tlmulti run`` on it reproduces the run), ``run.json``
(task, classes, versions), ``metrics.json``, ``history.csv`` and plots.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

from tlmulti.errors import RunError

_MARKER = ".tlmulti-run"


def create_run_dir(out, name: str) -> Path:
    """Create the run folder. An explicit ``out`` that exists and is not empty is an error; the
    default ``runs/<name>`` gets a numbered suffix instead."""
    if out:
        path = Path(out).expanduser()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunError(
                f"Run folder '{path}' already exists and is not empty; choose another --out "
                "(runs are never overwritten) or remove it yourself."
            )
    else:
        base = Path("runs") / name
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True, exist_ok=True)
    (path / _MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return path


def discard(path: Path) -> None:
    """Remove a run folder this process created, after a failure, so nothing half-written stays."""
    if (path / _MARKER).exists() and not (path / "model.keras").exists():
        shutil.rmtree(path, ignore_errors=True)


def absolute_paths(recipe):
    """A deep copy of the recipe with data paths absolute, so the saved recipe runs from anywhere."""
    import copy

    from tlmulti.recipe import resolve_path

    recipe = copy.deepcopy(recipe)
    for key in ("train", "val", "test"):
        setattr(recipe.data, key, resolve_path(getattr(recipe.data, key)))
    recipe.adaptation.target_data = resolve_path(recipe.adaptation.target_data)
    return recipe


def write_run(run_dir: Path, recipe, task, model, metrics: dict, history: list, classes, summary=None) -> None:
    from tlmulti import __version__

    model.save(run_dir / "model.keras")
    recipe.save(run_dir / "recipe.yaml")
    spec = task.spec
    info = {"task": recipe.task, "backbone": recipe.backbone.name, "classes": list(classes),
            "backbone_spec": {"source": spec.source, "families": list(spec.families), "input": spec.input,
                              "layer_groups": {k: list(v) for k, v in spec.layer_groups.items()},
                              "feature_layers": list(spec.feature_layers), "options": spec.options},
            "tlmulti": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if summary is not None:
        (run_dir / "data_summary.json").write_text(json.dumps(summary, indent=2))
    write_history(run_dir / "history.csv", history)
    if recipe.output.plots and history:
        from tlmulti.reports.plots import plot_curves

        plot_curves(history, run_dir / "curves.png")
    (run_dir / _MARKER).unlink(missing_ok=True)


def write_history(path: Path, history: list) -> None:
    columns = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or ["phase", "epoch"])
        writer.writeheader()
        writer.writerows(history)


def _run_spec(name: str, info: dict):
    """The backbone spec a run was trained with: the registry's, or the copy kept in run.json
    (a custom backbone registered in the training script need not be registered to predict)."""
    from tlmulti import registry
    from tlmulti.errors import RegistryError

    try:
        return registry.get_backbone(name)
    except RegistryError:
        saved = info.get("backbone_spec")
        if not saved:
            raise
        return registry.BackboneSpec(
            name=name, source=saved["source"], families=tuple(saved["families"]), input=saved["input"],
            layer_groups={k: tuple(v) for k, v in saved["layer_groups"].items()},
            feature_layers=tuple(saved["feature_layers"]), options=saved.get("options", {}))


def load_run(run_dir):
    """(recipe, task, model) of a finished run; errors name the missing file."""
    import keras

    import tlmulti.layers  # noqa: F401  registers custom layers
    from tlmulti.recipe import load_recipe, task_class

    run_dir = Path(run_dir)
    for name in ("model.keras", "recipe.yaml", "run.json"):
        if not (run_dir / name).is_file():
            raise RunError(
                f"'{run_dir}' is not a finished run folder: {name} is missing "
                "(give the --out folder of a 'train' command)."
            )
    recipe = load_recipe(run_dir / "recipe.yaml")
    info = json.loads((run_dir / "run.json").read_text())
    task = task_class(recipe.task)(recipe, spec=_run_spec(recipe.backbone.name, info))
    task.classes = info["classes"]
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    return recipe, task, model


def save_run_backbone(run_dir, name: str, overwrite: bool = False) -> str:
    """Save the (fine-tuned) backbone of a run folder as local backbone ``name``, with the
    contract, layer groups and skip layers of the spec it was trained with."""
    from tlmulti.backbones.local import save_backbone

    recipe, task, model = load_run(run_dir)
    layer = next((l for l in model.layers if l.name == "backbone" or (
        hasattr(l, "layers") and l.name not in ("head", "augment")
        and l.__class__.__name__ in ("Functional", "Model"))), None)
    if layer is None:
        raise RunError(f"Run '{run_dir}' has no backbone layer to save.")
    spec = task.spec
    names = [l.name for l in layer.layers]
    groups = {k: list(v) for k, v in spec.layer_groups.items()  # only groups the saved model still has
              if any(re.fullmatch("|".join(f"(?:{p})" for p in v), n) for n in names)}
    return save_backbone(layer, name, families=spec.families, input=dict(spec.input), layer_groups=groups,
                         feature_layers=spec.feature_layers, output_layer="",
                         description=f"fine-tuned from {spec.name} in {Path(run_dir).name}", overwrite=overwrite)
