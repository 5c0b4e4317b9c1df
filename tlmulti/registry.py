"""One registry for tasks, backbones and built-in datasets.

Specs are plain data: registering one imports nothing heavy, so ``tlmulti --help`` and
``tlmulti backbones list`` stay fast and never import TensorFlow. Built-in presets live in
:mod:`tlmulti.presets` and are registered the first time the registry is read; backbones saved
with :func:`tlmulti.save_backbone` are found in the user's backbone store.

Example::

    import tlmulti
    tlmulti.register_backbone(
        "my_cnn", source="builder", families=("vision",),
        builder="my_package.models:build_cnn",
        input={"size": [32, 32], "channels": 3, "normalization": "unit"},
        layer_groups={"stem": ["conv1.*"], "top": ["conv2.*"]},
    )
    print(tlmulti.get_backbone("my_cnn").source)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from tlmulti.errors import RegistryError


def sources() -> tuple[str, ...]:
    """The weight sources: one module each in :mod:`tlmulti.backbones` (``keras_hub``,
    ``keras_applications``, ``tfhub``, ``local``, ...), listed without importing them."""
    found = importlib.util.find_spec("tlmulti.backbones")
    return tuple(sorted(m.name for m in pkgutil.iter_modules(found.submodule_search_locations)
                        if not m.name.startswith("_")))


@dataclass(frozen=True)
class BackboneSpec:
    """Where a pretrained feature extractor comes from and how to feed and unfreeze it.

    Attributes:
        name: registry name, ``arch.tag`` style (``vgg16.hed_bsds500``).
        source: one of :func:`sources` (a module of :mod:`tlmulti.backbones`).
        families: task families it serves (``vision``, ``segmentation``, ``text``, ``audio``).
        handle: preset name or local preset dir (keras_hub), application class name
            (keras_applications), TF-Hub handle or SavedModel dir (tfhub), file (local).
        input: the data contract: e.g. ``{"size": [64, 64], "channels": 3,
            "normalization": "caffe"}`` for images, ``{"sample_rate": 16000}`` for audio.
        layer_groups: ordered bottom to top; group name -> layer-name regexes. Freezing and
            unfreezing are done by these names, never by index.
        output_layer: name of the layer whose output is the feature map ("" = model output).
        feature_layers: skip-connection layers for segmentation decoders, shallow to deep.
        weights_file: file name looked for in the weights store and the source's own cache.
        builder: ``"module:function"`` or callable ``(spec, weights) -> keras.Model``
            (source ``builder``).
        options: source-specific keyword arguments.
        description: one line for ``tlmulti backbones list``.
        license: the licence of the pretrained weights where known (``Apache-2.0``, ``MIT``); the
            model card says "not recorded" when empty.
    """

    name: str
    source: str
    families: tuple[str, ...]
    handle: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    layer_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    output_layer: str = ""
    feature_layers: tuple[str, ...] = ()
    weights_file: str = ""
    builder: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    license: str = ""

    def group_names(self) -> list[str]:
        return list(self.layer_groups)


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs: its family, defaults, its recipe sections and the class that implements it.

    ``implementation`` is ``"module:Class"`` and is imported only when the task runs, so the
    registry itself never imports TensorFlow. ``data_config`` and ``head_config`` are the
    dataclasses the recipe's ``data`` and ``head`` sections are validated into: a class or
    ``"module:Class"`` (default: :class:`tlmulti.recipe.DataConfig` and
    :class:`tlmulti.recipe.HeadConfig`, which a task's own classes usually extend).
    """

    name: str
    family: str
    implementation: str
    default_backbone: str
    default_recipe: str = ""
    description: str = ""
    data_config: Any = "tlmulti.recipe:DataConfig"
    head_config: Any = "tlmulti.recipe:HeadConfig"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset that ``dataset:NAME/SPLIT`` in a recipe resolves to, built on first use."""

    name: str
    builder: str  # "module:function", called as fn(root: Path, **options) -> None
    splits: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""  # where the raw data comes from, and how to install it


@dataclass(frozen=True)
class AdaptationSpec:
    """A domain-adaptation method the trainer can run: ``implementation`` is ``"module:Class"``
    (a :class:`tlmulti.training.adaptation.Adapter` subclass), empty for ``none``."""

    name: str
    implementation: str
    description: str = ""


_BACKBONES: dict[str, BackboneSpec] = {}
_TASKS: dict[str, TaskSpec] = {}
_DATASETS: dict[str, DatasetSpec] = {}
_ADAPTATIONS: dict[str, AdaptationSpec] = {}
_loaded = False


def _ensure_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("tlmulti.presets")
    _load_saved_backbones()


def _load_saved_backbones() -> None:
    from tlmulti import paths

    root = paths.backbone_store()
    if not root.is_dir():
        return
    for meta in sorted(root.glob("*/backbone.json")):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        data["handle"] = str(meta.parent / "backbone.keras")
        data["source"] = "local"
        if data.get("name") not in _BACKBONES:
            register_backbone(**data)


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _tupled(groups: dict) -> dict[str, tuple[str, ...]]:
    out = {}
    for key, value in (groups or {}).items():
        out[str(key)] = (value,) if isinstance(value, str) else tuple(value)
    return out


def register_backbone(name: str, *, source: str, families, replace: bool = False, **fields_) -> BackboneSpec:
    """Register a backbone spec under ``name`` and return it.

    ``families`` says which task families may use it. See :class:`BackboneSpec` for fields.
    Registering an existing name raises unless ``replace=True``.
    """
    if source not in sources():
        raise RegistryError(
            f"Backbone '{name}': unknown source '{source}'; use one of {', '.join(sources())}."
        )
    if name in _BACKBONES and not replace:
        raise RegistryError(f"Backbone '{name}' is already registered; pass replace=True to override it.")
    known = {f.name for f in dataclasses.fields(BackboneSpec)}
    unknown = set(fields_) - known
    if unknown:
        key = sorted(unknown)[0]
        raise RegistryError(f"Backbone '{name}': unknown field '{key}'.{_suggest(key, known)}")
    fields_["layer_groups"] = _tupled(fields_.get("layer_groups", {}))
    fields_["feature_layers"] = tuple(fields_.get("feature_layers", ()))
    spec = BackboneSpec(name=name, source=source, families=tuple(families), **fields_)
    _BACKBONES[name] = spec
    return spec


def register_task(name: str, *, family: str, implementation: str, default_backbone: str,
                  replace: bool = False, **fields_) -> TaskSpec:
    """Register a task: ``implementation`` is ``"module:Class"`` subclassing :class:`tlmulti.tasks.Task`;
    ``data_config`` / ``head_config`` (a dataclass or ``"module:Class"``) validate the recipe's
    ``data`` and ``head`` sections. See :class:`TaskSpec` for fields."""
    if name in _TASKS and not replace:
        raise RegistryError(f"Task '{name}' is already registered; pass replace=True to override it.")
    spec = TaskSpec(name=name, family=family, implementation=implementation,
                    default_backbone=default_backbone, **fields_)
    _TASKS[name] = spec
    return spec


def register_dataset(name: str, *, builder: str, splits, replace: bool = False, **fields_) -> DatasetSpec:
    """Register a dataset that recipes can name as ``dataset:NAME/SPLIT``."""
    if name in _DATASETS and not replace:
        raise RegistryError(f"Dataset '{name}' is already registered; pass replace=True to override it.")
    spec = DatasetSpec(name=name, builder=builder, splits=tuple(splits), **fields_)
    _DATASETS[name] = spec
    return spec


def register_adaptation(name: str, *, implementation: str, description: str = "",
                        replace: bool = False) -> AdaptationSpec:
    """Register a domain-adaptation method that recipes name as ``adaptation.method``."""
    if name in _ADAPTATIONS and not replace:
        raise RegistryError(f"Adaptation method '{name}' is already registered; pass replace=True to override it.")
    spec = AdaptationSpec(name=name, implementation=implementation, description=description)
    _ADAPTATIONS[name] = spec
    return spec


def adaptation_methods() -> tuple[str, ...]:
    """Names of the registered adaptation methods (``none`` first)."""
    _ensure_builtins()
    return tuple(_ADAPTATIONS)


def _get(table: dict, kind: str, name: str, where: str):
    _ensure_builtins()
    if name not in table:
        raise RegistryError(f"Unknown {kind} '{name}'.{_suggest(name, table)} {where}")
    return table[name]


def get_adaptation(name: str) -> AdaptationSpec:
    return _get(_ADAPTATIONS, "adaptation method", name, f"Use one of {', '.join(_ADAPTATIONS)}.")


def get_backbone(name: str) -> BackboneSpec:
    return _get(_BACKBONES, "backbone", name, "See 'tlmulti backbones list' for the ones available.")


def get_task(name: str) -> TaskSpec:
    return _get(_TASKS, "task", name, f"Known tasks: {', '.join(sorted(_TASKS))}.")


def get_dataset(name: str) -> DatasetSpec:
    return _get(_DATASETS, "dataset", name, "See 'tlmulti datasets list' for the built-in ones.")


def list_backbones(family: str | None = None) -> list[BackboneSpec]:
    _ensure_builtins()
    return [s for s in _BACKBONES.values() if family is None or family in s.families]


def list_tasks(family: str | None = None) -> list[TaskSpec]:
    _ensure_builtins()
    return [s for s in _TASKS.values() if family is None or s.family == family]


def list_datasets() -> list[DatasetSpec]:
    _ensure_builtins()
    return list(_DATASETS.values())


def unregister_backbone(name: str) -> None:
    _BACKBONES.pop(name, None)


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def resolve(ref: str | Callable) -> Any:
    """Import ``"module:attr"`` (or return a callable as it is)."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
