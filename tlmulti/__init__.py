"""tlmulti: transfer learning for vision, text and audio on TensorFlow / Keras 3.

Importing ``tlmulti`` is light (no TensorFlow); the training and model functions import it
when called.

Example::

    import tlmulti
    recipe = tlmulti.load_recipe("recipes/vision/fashion_mnist.yaml")
    run = tlmulti.train(recipe, out="runs/fashion")
    print(run.metrics["test"]["accuracy"])
    print(tlmulti.evaluate("runs/fashion", "dataset:fashion-mnist/test")["accuracy"])
"""

from __future__ import annotations

__version__ = "0.1.0"

from tlmulti.errors import (  # noqa: E402
    DataError,
    MissingWeightsError,
    RecipeError,
    RegistryError,
    RunError,
    TlmultiError,
)
from tlmulti.recipe import Recipe, load_recipe  # noqa: E402
from tlmulti.registry import (  # noqa: E402
    get_backbone,
    get_task,
    list_backbones,
    list_tasks,
    register_backbone,
    register_dataset,
    register_task,
)


def train(recipe: Recipe, out=None):
    """Train a recipe end to end; returns a ``Run`` (``dir``, ``metrics``, ``model``)."""
    from tlmulti.training import train as _train

    return _train(recipe, out=out)


def load_model(path):
    """Load ``model.keras`` of a run folder (or a ``.keras`` file) with tlmulti's layers registered."""
    from pathlib import Path

    from tlmulti.backbones.local import load_keras_file

    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    return load_keras_file(path)


def evaluate(run_dir, data: str, group_by: str | None = None) -> dict:
    """Metrics of a trained run on labelled ``data`` (folder, manifest or ``dataset:NAME/SPLIT``)."""
    from tlmulti.runs import load_run

    recipe, task, model = load_run(run_dir)
    examples = task.read(data, classes=task.classes)
    return task.evaluate(model, examples, group_by=group_by)


def predict(run_dir, items, top_k: int = 3) -> list[dict]:
    """Predictions of a trained run for files, folders or (text tasks) strings."""
    from tlmulti.runs import load_run

    recipe, task, model = load_run(run_dir)
    return task.predict(model, list(items), top_k=top_k)


def save_backbone(model, name: str, **spec) -> str:
    """Save a trained Keras backbone as a named local backbone the registry offers from now on."""
    from tlmulti.backbones.local import save_backbone as _save

    return _save(model, name, **spec)


__all__ = [
    "DataError", "MissingWeightsError", "Recipe", "RecipeError", "RegistryError", "RunError",
    "TlmultiError", "__version__", "evaluate", "get_backbone", "get_task", "list_backbones",
    "list_tasks", "load_model", "load_recipe", "predict", "register_backbone", "register_dataset",
    "register_task", "save_backbone", "train",
]
