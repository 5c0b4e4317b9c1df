"""Recipes: one YAML format for every task, validated into dataclasses.

A recipe names the task, the backbone, the head, the data, the training phases and the
optimizer. Unknown keys and wrong types are errors that name the key and suggest the nearest
valid one. ``--set a.b=c`` overrides are applied before validation. The resolved recipe (every
default filled in, paths made absolute) is written into the run folder, and ``tlmulti run`` on
that file reproduces the run.

Example::

    import tlmulti
    recipe = tlmulti.load_recipe("recipes/vision/fashion_mnist.yaml",
                                 overrides=["phases.0.epochs=1", "data.batch_size=16"])
    print(recipe.backbone.name, [p.epochs for p in recipe.phases])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from tlmulti import registry
from tlmulti.errors import RecipeError, TlmultiError

# --------------------------------------------------------------------------------------------
# Sections shared by every task. Tasks extend DataConfig and HeadConfig with their own fields.


@dataclass
class BackboneConfig:
    """``name`` of a registered backbone (empty: the task's default); ``weights``: a local file or
    preset directory to load instead of the registry's source; ``output_layer``: cut the backbone
    at this layer (e.g. ``block4_conv3``) instead of the spec's default."""

    name: str = ""
    weights: Optional[str] = None
    output_layer: Optional[str] = None


@dataclass
class HeadConfig:
    """Classification head: pooling, optional hidden layers, dropout, then the class layer."""

    pooling: str = "avg"
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.2
    activation: str = "relu"


@dataclass
class DataConfig:
    """Where the data is and how it is split. Paths are folders, manifests, or
    ``dataset:NAME/SPLIT`` for a built-in dataset prepared on first use.

    ``holdout``: ``column=value`` rules (e.g. ``accent=en-029``); training examples matching any
    rule are kept out of training and validation and evaluated with the test set instead, for
    leave-one-group-out scores (``--holdout`` on the command line)."""

    train: Optional[str] = None
    val: Optional[str] = None
    test: Optional[str] = None
    val_split: float = 0.2
    batch_size: int = 32
    label_column: str = "label"
    group_column: Optional[str] = None
    limit_per_class: Optional[int] = None
    class_weight: Optional[str] = None
    holdout: list[str] = field(default_factory=list)


@dataclass
class PhaseConfig:
    """One training phase.

    ``unfreeze``: layer groups of the backbone that train in this phase: a list of group names,
    ``"top:N"`` (the N highest groups), ``"all"`` or ``"none"`` (the default: frozen backbone).
    ``batchnorm``: ``frozen`` keeps every BatchNorm layer in inference mode with fixed
    statistics and fixed scale/offset (the default); ``train`` lets BatchNorm layers in unfrozen
    groups update their statistics and parameters.
    ``lr_decay``: discriminative learning rates: the top unfrozen group trains at
    ``learning_rate``, each group below it at ``lr_decay`` times the one above; the head always at
    ``learning_rate``. ``group_lr`` sets explicit multipliers per group instead.
    ``cache_features``: ``auto`` computes backbone features once when nothing below the head
    trains (augmentation is then not applied in that phase); ``true`` / ``false`` force it.
    """

    name: str = ""
    epochs: int = 5
    learning_rate: float = 1e-3
    unfreeze: Union[str, list[str]] = "none"
    batchnorm: str = "frozen"
    lr_decay: float = 1.0
    group_lr: dict[str, float] = field(default_factory=dict)
    cache_features: Union[bool, str] = "auto"


@dataclass
class OptimizerConfig:
    name: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    clipnorm: Optional[float] = None


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    patience: int = 3
    restore_best_weights: bool = True


@dataclass
class CallbacksConfig:
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    tensorboard: bool = False
    verbose: Optional[int] = None  # Keras fit verbosity; None: progress bar on a terminal, a line per epoch otherwise


@dataclass
class AdaptationConfig:
    """Unsupervised domain adaptation to unlabelled ``target_data`` (see the trainer)."""

    method: str = "none"
    target_data: Optional[str] = None
    weight: float = 1.0
    schedule: str = "ramp"


@dataclass
class OutputConfig:
    dir: Optional[str] = None
    plots: bool = True
    top_k: int = 3


@dataclass
class Recipe:
    task: str = "image_classification"
    name: str = "run"
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: Any = field(default_factory=HeadConfig)
    data: Any = field(default_factory=DataConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig(name="head")])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    distribute: str = "auto"
    output: OutputConfig = field(default_factory=OutputConfig)
    source: Optional[str] = None  # the file it was loaded from; not part of the saved recipe

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path) -> None:
        Path(path).write_text(self.to_yaml())


CHOICES = {
    "phases.batchnorm": ("frozen", "train"),
    "optimizer.name": ("adam", "adamw", "sgd", "rmsprop"),
    "distribute": ("auto", "default", "mirrored", "multi_worker"),
    "adaptation.method": ("none", "adabn", "dann", "coral"),
    "adaptation.schedule": ("ramp", "constant"),
    "data.class_weight": (None, "balanced"),
}

# --------------------------------------------------------------------------------------------
# Building dataclasses from plain data with errors that name the key.


def _where(source: str | None) -> str:
    return f" in {source}" if source else ""


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _convert(value, tp, key: str, source: str | None):
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except RecipeError as exc:
                errors.append(exc)
        raise RecipeError(f"Key '{key}'{_where(source)} must be {_type_name(tp)}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and item in (str, int, float):
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"Key '{key}'{_where(source)} must be {_type_name(tp)}, got {value!r}.")
        return [_convert(v, item, f"{key}.{i}", source) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise RecipeError(f"Key '{key}'{_where(source)} must be a mapping, got {value!r}.")
        return {str(k): _convert(v, item, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-3 as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise RecipeError(f"Key '{key}'{_where(source)} must be {_type_name(tp)}, got {value!r}.")


def build(cls, data, prefix: str = "", source: str | None = None):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    label = prefix or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"Key '{label}'{_where(source)} must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" Did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            raise RecipeError(
                f"Unknown key '{full}'{_where(source)}.{hint} Valid keys here: {', '.join(names)}."
            )
        kwargs[key] = _convert(value, hints[key], full, source)
    obj = cls(**kwargs)
    _check_choices(obj, prefix, source)
    return obj


def _check_choices(obj, prefix: str, source: str | None) -> None:
    section = prefix.split(".")[0] if prefix else ""
    if section == "phases":
        section = "phases"
    for f in dataclasses.fields(obj):
        rule = f"{section}.{f.name}" if section else f.name
        if rule in CHOICES:
            value = getattr(obj, f.name)
            if value not in CHOICES[rule]:
                choices = ", ".join(str(c) for c in CHOICES[rule])
                full = f"{prefix}.{f.name}" if prefix else f.name
                raise RecipeError(f"Key '{full}'{_where(source)} must be one of {choices}, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"Override '{text}' must look like key.path=value, e.g. phases.0.epochs=3.")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise RecipeError(f"Override '{text}' has no key before '='.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-5 as a string
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied; list items by index."""
    data = copy.deepcopy(data)
    for text in overrides or ():
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = _list_item(node, part, where, text)
                continue
            if node.get(part) is None:
                node[part] = [] if part == "phases" else {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"Override '{text}': '{where}' is a value, not a section.")
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(last, node, text)
            if idx == len(node):
                node.append(value)
            else:
                node[idx] = value
        else:
            node[last] = value
    return data


def _index(part: str, node: list, text: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise RecipeError(f"Override '{text}': '{part}' must be a list index (0, 1, ...).") from None
    if not 0 <= idx <= len(node):
        raise RecipeError(f"Override '{text}': index {idx} is out of range (the list has {len(node)} items).")
    return idx


def _list_item(node: list, part: str, where: str, text: str):
    idx = _index(part, node, text)
    if idx == len(node):
        node.append({})
    item = node[idx]
    if item is None:
        item = node[idx] = {}
    return item


# --------------------------------------------------------------------------------------------
# Loading


def task_class(task_name: str):
    spec = registry.get_task(task_name)
    return registry.resolve(spec.implementation)


def from_dict(data: dict, overrides=(), source: str | None = None) -> Recipe:
    """Validate a recipe mapping (after ``overrides``) into a :class:`Recipe`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe{_where(source)} must be a YAML mapping of sections (task, backbone, data, ...).")
    data = apply_overrides(data, overrides)
    task_name = data.get("task", Recipe.task)
    if not isinstance(task_name, str):
        raise RecipeError(f"Key 'task'{_where(source)} must be a string, got {task_name!r}.")
    try:
        cls = task_class(task_name)
    except TlmultiError as exc:
        raise RecipeError(f"Key 'task'{_where(source)}: {exc}") from None
    body = {k: v for k, v in data.items() if k not in ("head", "data")}
    recipe = build(Recipe, body, "", source)
    recipe.head = build(cls.head_config, data.get("head"), "head", source)
    recipe.data = build(cls.data_config, data.get("data"), "data", source)
    if not recipe.phases:
        raise RecipeError(f"Key 'phases'{_where(source)} must list at least one phase.")
    for i, phase in enumerate(recipe.phases):
        if not phase.name:
            phase.name = f"phase{i + 1}"
        if phase.epochs < 0:
            raise RecipeError(f"Key 'phases.{i}.epochs'{_where(source)} must be 0 or more, got {phase.epochs}.")
        if isinstance(phase.cache_features, str) and phase.cache_features != "auto":
            raise RecipeError(
                f"Key 'phases.{i}.cache_features'{_where(source)} must be auto, true or false, "
                f"got {phase.cache_features!r}."
            )
    if not recipe.backbone.name:
        recipe.backbone.name = registry.get_task(task_name).default_backbone
    recipe.source = source
    return recipe


def load_recipe(path=None, overrides=(), task: str | None = None) -> Recipe:
    """Load a YAML recipe (or the default recipe of ``task`` when ``path`` is None).

    Raises :class:`tlmulti.errors.RecipeError` naming the file and key on any problem.
    """
    if path is None:
        if task is None:
            raise RecipeError("Give a recipe file or a task name.")
        path = default_recipe_path(task)
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file '{path}' does not exist; see 'tlmulti recipes list' for the bundled ones.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"Recipe file '{path}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"Recipe file '{path}' cannot be read: {exc}.") from None
    return from_dict(data, overrides, source=str(path))


def recipes_dir() -> Path:
    """The bundled recipes: ``recipes/`` of a source checkout, or the copy installed with the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "recipes", here / "_recipes"):
        if candidate.is_dir():
            return candidate
    return here.parent / "recipes"


def default_recipe_path(task: str) -> Path:
    spec = registry.get_task(task)
    if not spec.default_recipe:
        raise RecipeError(f"Task '{task}' has no default recipe; give a recipe file.")
    return recipes_dir() / spec.default_recipe


def resolve_path(value: str | None) -> str | None:
    """Absolute form of a data path; ``dataset:`` references and None pass through."""
    if value is None or value.startswith("dataset:") or "://" in value:
        return value
    return str(Path(os.path.expandvars(value)).expanduser().resolve())
