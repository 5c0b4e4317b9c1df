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

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from tlmulti import choices, registry
from tlmulti.errors import RecipeError, TlmultiError
from tlmulti.overrides import apply_overrides
from tlmulti.schema import above, at_least, build, choice, field_choices, located  # noqa: F401  (the recipe API)


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
    weights_lock: Optional[str] = None  # a lockfile (tlmulti weights lock): refuse weights with other hashes


@dataclass
class HeadConfig:
    """Classification head: pooling, optional feature normalisation, hidden layers, dropout, then
    the class layer. ``normalize``: ``batchnorm`` standardises each pooled feature over the data
    (BatchNorm without scale and offset, as in MAE's linear probing) for backbones whose features
    have large, shared offsets; ``auto`` follows the backbone's contract (``input.feature_normalize``).
    ``label_smoothing``: the weight moved from the true class to a uniform target (0.1 is usual).
    ``loss``: crossentropy | focal (cross-entropy scaled by ``(1 - p_true) ** focal_gamma``, for
    imbalanced data; Lin et al. 2017)."""

    pooling: str = choice("avg", choices.POOLINGS)
    normalize: str = choice("auto", choices.FEATURE_NORMALIZATIONS)
    label_smoothing: float = at_least(0.0, 0.0)
    loss: str = choice("crossentropy", choices.CLASSIFICATION_LOSSES)
    focal_gamma: float = at_least(2.0, 0.0)
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.2
    activation: str = "relu"


@dataclass
class DataConfig:
    """Where the data is and how it is split. Paths are folders, manifests, or
    ``dataset:NAME/SPLIT`` for a built-in dataset prepared on first use.

    ``holdout``: ``column=value`` rules (e.g. ``accent=en-029``); training examples matching any
    rule are kept out of training and validation and evaluated with the test set instead, for
    leave-one-group-out scores (``--holdout`` on the command line).

    ``split_by``: a manifest column (e.g. ``patient``) whose every value lands in one split: the
    validation split keeps whole groups (stratified by label as far as groups allow), and a value
    seen in both the training and the test data is an error (``--split-by``).
    ``positive_class`` (two classes; default the second in sorted order) is the class AUROC,
    AUPRC, sensitivity and specificity are of; ``threshold`` is the decision threshold on its
    probability (default: chosen on the validation data by Youden's J).

    ``streaming``: read examples from their files in the input pipeline instead of decoding
    them all before training (``auto``: when the decoded inputs would exceed 1 GiB); memory then
    stays flat however many files there are."""

    train: Optional[str] = None
    val: Optional[str] = None
    test: Optional[str] = None
    val_split: float = 0.2
    batch_size: int = at_least(32, 1)
    label_column: str = "label"
    group_column: Optional[str] = None
    limit_per_class: Optional[int] = None
    class_weight: Optional[str] = choice(None, choices.CLASS_WEIGHTS)
    holdout: list[str] = field(default_factory=list)
    split_by: Optional[str] = None
    positive_class: Optional[str] = None
    threshold: Optional[float] = None
    streaming: Union[bool, str] = choice("auto", choices.STREAMING)


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
    trains (augmentation is then not applied in that phase); in a phase that unfreezes groups of
    an image, text or speech classification backbone, it computes the frozen part below the
    lowest unfrozen group once and trains the layers above it on that (:mod:`tlmulti.training.cut`;
    a transformer's hidden states with its padding mask; a random flip is cached as views: every
    flip of each image, one drawn per epoch), unless random augmentation other than flips is on
    (speech: waveform augmentation, SpecAugment); ``true`` caches even then (flips as views,
    without the rest); ``false`` always trains end to end.
    ``epochs``: a number, or ``auto``: scaled to the training set (about 300 optimizer steps for
    a frozen phase, 10 to 50 epochs; about 150 for a phase that trains the backbone, 3 to 15).
    ``schedule``: ``constant`` or ``cosine`` (cosine decay to zero over the phase); ``warmup``:
    the fraction of the phase's steps over which the rate rises linearly from zero first.
    ``patience``: early-stopping patience of this phase (None: ``callbacks.early_stopping.patience``,
    whose ``auto`` gives each phase a fifth of its epochs, at least 2, written here).
    """

    name: str = ""
    epochs: Union[int, str] = at_least(5, 0, auto=True)
    learning_rate: float = above(1e-3, 0)
    schedule: str = choice("constant", choices.LR_SCHEDULES)
    warmup: float = at_least(0.0, 0.0)
    patience: Optional[int] = at_least(None, 0)  # None: callbacks.early_stopping.patience
    unfreeze: Union[str, list[str]] = "none"
    batchnorm: str = choice("frozen", choices.BATCHNORM_POLICIES)
    lr_decay: float = at_least(1.0, 0.0)
    group_lr: dict[str, float] = field(default_factory=dict)
    cache_features: Union[bool, str] = choice("auto", choices.CACHE_FEATURES)


@dataclass
class OptimizerConfig:
    name: str = choice("adam", choices.OPTIMIZERS)
    weight_decay: float = at_least(0.0, 0.0)
    momentum: float = 0.9
    clipnorm: Optional[float] = None


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    patience: Union[int, str] = at_least(3, 0, auto=True)  # auto: a fifth of the phase's epochs, at least 2
    restore_best_weights: bool = True


@dataclass
class CallbacksConfig:
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    tensorboard: bool = False
    verbose: Optional[int] = None  # Keras fit verbosity; None: progress bar on a terminal, a line per epoch otherwise


@dataclass
class AdaptationConfig:
    """Unsupervised domain adaptation to unlabelled ``target_data``, after the source phases (see
    :mod:`tlmulti.training.adaptation`). ``method``: one method, ``auto`` (try source-only and
    every applicable method, keep the best label-free score) or ``none``. ``weight``: the target
    loss's weight (reached at the end of the ramp); ``epochs``: length of the stage (``auto``:
    about 150 optimizer steps, 2 to 10 epochs); ``learning_rate`` and ``unfreeze``: default to
    those of the last phase that unfroze a group; ``guard``: the largest drop of the source
    validation metric accepted before a method's weights are put back; ``candidates``: the
    methods ``auto`` tries (empty: all); ``select_margin``: how much a method's score must beat
    source-only's for ``auto`` to keep it; ``confidence``: the pseudo-label threshold of
    ``self_training``."""

    method: str = choice("none", registry.adaptation_methods)
    target_data: Optional[str] = None
    weight: float = at_least(1.0, 0.0)
    schedule: str = choice("ramp", choices.ADAPTATION_SCHEDULES)
    epochs: Union[int, str] = at_least("auto", 1, auto=True)
    learning_rate: Optional[float] = above(None, 0)
    unfreeze: Optional[Union[str, list[str]]] = None
    guard: float = at_least(0.02, 0.0)
    candidates: list[str] = field(default_factory=list)
    select_margin: float = at_least(0.02, 0.0)
    confidence: float = at_least(0.9, 0.0)


@dataclass
class CacheConfig:
    """The frozen phase's feature cache (:mod:`tlmulti.data.cache`): ``disk`` keeps features
    under ``$TLMULTI_HOME/cache/features`` for later runs (false: in memory, this run only);
    ``dtype`` float16 (half the size; float32 where a value would overflow) or float32."""

    disk: bool = True
    dtype: str = choice("float16", choices.CACHE_DTYPES)


@dataclass
class EvaluationConfig:
    """``bootstrap``: resamples of the test set for 95% confidence intervals of accuracy and AUROC
    (0: none; seeded with the recipe's seed); ``calibration_bins``: bins of the expected
    calibration error and the reliability diagram."""

    bootstrap: int = at_least(1000, 0)
    calibration_bins: int = at_least(15, 2)


@dataclass
class TuneConfig:
    """``--tune N``: an Optuna study of ``trials`` trials before the final training (see
    :mod:`tlmulti.training.tune`); ``timeout``: seconds after which no trial starts;
    ``storage``: an Optuna RDB URL (default: SQLite ``tune.db`` in the run folder)."""

    trials: int = at_least(0, 0)
    timeout: Optional[float] = above(None, 0)
    storage: Optional[str] = None


@dataclass
class TrackingConfig:
    """``--track``: log the run to an experiment tracker (see :mod:`tlmulti.training.tracking`).
    ``backend``: none or mlflow; ``uri``: the tracking server (default: the embedded SQLite store
    ``$TLMULTI_HOME/mlflow.db``); ``experiment``: default the recipe's name; ``log_model``: also
    log the trained model as an MLflow Keras model (large)."""

    backend: str = choice("none", choices.TRACKING_BACKENDS)
    uri: Optional[str] = None
    experiment: Optional[str] = None
    log_model: bool = False


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
    deterministic: bool = False  # seed every generator and turn on TensorFlow's op determinism
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: Any = field(default_factory=HeadConfig)
    data: Any = field(default_factory=DataConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig(name="head")])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    distribute: str = choice("auto", choices.DISTRIBUTE)
    precision: str = choice("float32", choices.PRECISIONS)  # Keras dtype policy while building and training
    cache: CacheConfig = field(default_factory=CacheConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    baseline: bool = True  # fit and report the classic baseline (tlmulti.evaluation.baseline)
    calibration: str = choice("none", choices.CALIBRATIONS)  # temperature: tlmulti.training.calibration
    strategy: str = choice("fixed", choices.STRATEGIES)  # auto: search on validation data (tlmulti.training.strategy)
    strategy_budget: float = at_least(5.0, 1.5)  # the search and final training, in plain runs
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
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



# --------------------------------------------------------------------------------------------
# Loading


def section_configs(spec: registry.TaskSpec) -> tuple[type, type]:
    """The dataclasses of a task's ``head`` and ``data`` sections, as its registry entry names
    them (classes or ``"module:Class"`` strings)."""
    return registry.resolve(spec.head_config), registry.resolve(spec.data_config)


def from_dict(data: dict, overrides=(), source: str | None = None, typed: dict | None = None) -> Recipe:
    """Validate a recipe mapping (after ``overrides``) into a :class:`Recipe`. An error about a
    key an override set names the override (``typed``: what the user typed for some of them,
    e.g. a command-line flag)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe{located(source)} must be a YAML mapping of sections (task, backbone, data, ...).")
    if data.get("phases") is None:  # the default phase, spelt out so 'phases.*' overrides reach it
        data = {**data, "phases": [{"name": "head"}]}
    data = apply_overrides(data, overrides)
    task_name = data.get("task", Recipe.task)
    if not isinstance(task_name, str):
        raise RecipeError(f"Key 'task'{located(source)} must be a string, got {task_name!r}.")
    try:
        spec = registry.get_task(task_name)
    except TlmultiError as exc:
        raise RecipeError(f"Key 'task'{located(source)}: {exc}") from None
    head_config, data_config = section_configs(spec)
    body = {k: v for k, v in data.items() if k not in ("head", "data")}
    try:
        recipe = build(Recipe, body, "", source)
        recipe.head = build(head_config, data.get("head"), "head", source)
        recipe.data = build(data_config, data.get("data"), "data", source)
    except RecipeError as exc:
        raise _blame_override(exc, overrides, source, typed) from None
    if not recipe.phases:
        raise RecipeError(f"Key 'phases'{located(source)} must list at least one phase.")
    for i, phase in enumerate(recipe.phases):
        if not phase.name:
            phase.name = f"phase{i + 1}"
    if recipe.tracking.uri and recipe.tracking.backend == "none":
        raise RecipeError(f"Key 'tracking.uri'{located(source)} is set but 'tracking.backend' is none: add --track "
                          "or 'tracking: {backend: mlflow}', or remove the uri.")
    if not recipe.backbone.name:
        recipe.backbone.name = spec.default_backbone
    recipe.source = source
    return recipe


def _blame_override(exc: RecipeError, overrides, source: str | None, typed=None) -> RecipeError:
    """An error about a key that an override set (the key itself, an item below it, or one that
    its ``*`` matches) names that override, not the recipe file: ``--set OVERRIDE``, or what
    ``typed`` says the user typed for it (``{"phases.*.epochs=-1": "--epochs -1"}``)."""
    text = str(exc)
    for override in reversed(list(overrides or ())):  # the last override of a key is the one that counts
        key = override.partition("=")[0].strip()
        pattern = r"[^.']+".join(re.escape(part) for part in key.split("*"))
        match = re.match(rf"Key '({pattern}(?:\.[^']*)?)'{re.escape(located(source))} ", text)
        if match:
            blamed = (typed or {}).get(override) or f"--set {override}"
            return RecipeError(f"Key '{match.group(1)}' ({blamed}) " + text[match.end():])
    return exc


def load_recipe(path=None, overrides=(), task: str | None = None, typed: dict | None = None) -> Recipe:
    """Load a YAML recipe (or the default recipe of ``task`` when ``path`` is None).

    Raises :class:`tlmulti.errors.RecipeError` naming the file and key on any problem, or the
    override that set the key (``typed``: override -> what the user typed, as for :func:`from_dict`).
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
    return from_dict(data, overrides, source=str(path), typed=typed)


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
