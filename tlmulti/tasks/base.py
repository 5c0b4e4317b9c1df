"""The Task interface: what a domain declares so the shared trainer can run it.

A task reads data into :class:`~tlmulti.data.Examples`, builds :class:`ModelParts` (inputs,
preprocessing, augmentation, backbone, head, named layer groups) and evaluates a trained model.
It never trains: :func:`tlmulti.training.fine_tune` does that for every task.

Module level code here and in task modules imports no TensorFlow, so reading a recipe and
listing the registry stay light; Keras is imported inside the methods that build models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlmulti import registry
from tlmulti.data import Examples, concat, group_split, limit_per_class, split_holdout, stratified_split
from tlmulti.errors import DataError, TlmultiError
from tlmulti.recipe import Recipe
from tlmulti.reports.view import ReportView
from tlmulti.tasks.exporting import TaskExport


@dataclass
class ModelParts:
    """The pieces of a transfer model, shared by every phase.

    ``inputs``: Keras input(s) taking raw examples; ``augment``: random layers active only in
    training (or None); ``preprocess``: layer from raw input to the backbone's contract (or None);
    ``backbone``: the pretrained feature extractor; ``head``: a model from backbone features to
    outputs; ``groups``: backbone layer groups, ordered bottom to top; ``augment_pairs``: a
    function ``(x, y) -> (x, y)`` the trainer maps over training examples in phases that do not
    use the feature cache, for augmentation that must move input and label together (an image
    and its segmentation mask), or None.
    """

    inputs: Any
    backbone: Any
    head: Any
    preprocess: Any = None
    augment: Any = None
    groups: dict[str, list] = field(default_factory=dict)
    augment_pairs: Any = None

    def features(self, x, training=False, augment=False):
        if augment and self.augment is not None:
            x = self.augment(x)
        if self.preprocess is not None:
            x = self.preprocess(x)
        return self.backbone(x, training=training)

    def assemble(self, backbone_training: bool | None = False, augment: bool = True, name: str = "model"):
        """The end-to-end model. ``backbone_training=False`` pins the backbone (and its BatchNorm)
        to inference mode whatever ``fit`` says; ``None`` lets the training flag through, so
        unfrozen layers train while BatchNorm layers marked non-trainable still run in inference
        mode (Keras 3 semantics)."""
        import keras

        feats = self.features(self.inputs, training=backbone_training, augment=augment)
        return keras.Model(self.inputs, self.head(feats), name=name)

    def feature_model(self):
        """Raw inputs to backbone features in inference mode: what the feature cache stores."""
        import keras

        return keras.Model(self.inputs, self.features(self.inputs, training=False), name="features")


def resolve_groups(backbone, spec: registry.BackboneSpec) -> dict[str, list]:
    """Map the spec's group regexes onto the backbone's top-level layers (bottom to top).

    Loading checked that every group matches a layer of the whole model; a group is left out
    here only when the model was cut below it (``backbone.output_layer``, fewer skip layers) or
    the task does not use its layers (the BERT pooler with mean pooling)."""
    layers = [l for l in backbone.layers if l.__class__.__name__ != "InputLayer"]
    if not spec.layer_groups:
        return {"backbone": layers}
    groups: dict[str, list] = {}
    for name, patterns in spec.layer_groups.items():
        regex = re.compile("|".join(f"(?:{p})" for p in patterns))
        groups[name] = [l for l in layers if regex.fullmatch(l.name)]
    return {k: v for k, v in groups.items() if v}


class Task(TaskExport):
    """Base class: subclasses set ``name`` and ``family`` and implement ``read``/``build``; the
    recipe sections they read are validated by their registry entry's ``data_config`` and
    ``head_config``."""

    name = ""
    family = ""
    #: How report.html reads this task's metrics (headline rows, per-class columns, confusion).
    report_view = ReportView()

    def __init__(self, recipe: Recipe, spec: registry.BackboneSpec | None = None):
        self.recipe = recipe
        self.spec = spec or registry.get_backbone(recipe.backbone.name)
        if self.family not in self.spec.families and self.name not in self.spec.families:
            raise TlmultiError(
                f"Backbone '{self.spec.name}' serves {', '.join(self.spec.families)}, not {self.family} "
                f"(recipe key backbone.name); see 'tlmulti backbones list --family {self.family}'."
            )

    # -- data -----------------------------------------------------------------------------------
    def read(self, ref: str, classes: list[str] | None = None, labelled: bool = True) -> Examples:
        raise NotImplementedError

    def read_inputs(self, items: list[str]) -> tuple[Any, list[str]]:
        """Raw inputs for prediction (files, folders or strings) -> (x, names)."""
        raise NotImplementedError

    def load_splits(self) -> tuple[Examples, Examples, Examples | None]:
        """Train, validation (given or a seeded split of train) and optional test.

        Training examples matching ``data.holdout`` rules are removed before the split and added
        to the test set (which they form alone when there is no test data). A task whose
        readers produce something other than examples first (segmentation reads whole images
        and tiles them afterwards) overrides the three hooks :meth:`read_split`,
        :meth:`split_validation` and :meth:`to_examples`, not this method."""
        train, val, classes, held = self.split_items()
        data = self.recipe.data
        test = self.to_examples(*self.read_split(data.test, classes)) if data.test else None
        split_by = self.split_column(train)
        if split_by and test is not None and split_by in test.meta:
            seen = {str(v) for v in train.meta[split_by]} | {str(v) for v in val.meta.get(split_by, ())}
            shared = sorted(seen & {str(v) for v in test.meta[split_by]})
            if shared:
                raise DataError(f"'{split_by}' values in both the training and the test data ({data.test}): "
                                f"{', '.join(shared[:10])}{' ...' if len(shared) > 10 else ''}; each "
                                f"{split_by} must be in one split only.")
        if held is not None:  # held-out groups are evaluated with the test set, never trained on
            held = self.to_examples(held, classes)
            test = held if test is None else concat(test, held)
        return self.to_examples(train, classes), self.to_examples(val, classes), test

    def split_items(self):
        """``(train, val, classes, held)`` as :meth:`read_split` gives them (items, not yet
        examples), split as :meth:`load_splits` splits them; ``held``: the hold-out rows or None.
        The export check takes its validation sample from here without decoding the training data."""
        data = self.recipe.data
        if not data.train:
            raise TlmultiError("No training data: pass --data or set data.train in the recipe.")
        train, classes = self.read_split(data.train)
        split_by = self.split_column(train)
        if split_by:
            self._require_column(train, split_by, f"'{data.train}'")
        held = None
        if data.holdout:
            train, held = split_holdout(train, data.holdout, f"'{data.train}'")
        if data.limit_per_class:
            train = train.subset(limit_per_class(self.stratify_labels(train), data.limit_per_class, self.recipe.seed))
        if data.val:
            val, _ = self.read_split(data.val, classes)
        else:
            if not 0 < data.val_split < 1:
                raise TlmultiError("data.val_split must be between 0 and 1 when no validation data is given.")
            train, val = self.split_validation(train, data.val_split, self.recipe.seed)
        return train, val, classes, held

    def read_split(self, ref: str, classes: list[str] | None = None):
        """``(items, classes)`` of one split; by default the examples :meth:`read` gives."""
        examples = self.read(ref, classes=classes)
        return examples, examples.classes

    def split_validation(self, items, fraction: float, seed: int):
        """``(train, val)``: by default a seeded stratified split of the examples; with
        ``data.split_by``, whole groups (every example of one patient, say) on one side."""
        split_by = self.split_column(items)
        if split_by:
            keep, val_idx = group_split(self.stratify_labels(items), items.meta[split_by], fraction, seed)
        else:
            keep, val_idx = stratified_split(self.stratify_labels(items), fraction, seed)
        return items.subset(keep), items.subset(val_idx)

    def split_column(self, examples) -> str | None:
        """The column whose values stay in one split: ``data.split_by``, else the task's own
        (image classification: the file, when volumes give several slices)."""
        return getattr(self.recipe.data, "split_by", None) or self.default_split_by(examples)

    def default_split_by(self, examples) -> str | None:
        return None

    @staticmethod
    def _require_column(examples: Examples, column: str, source: str) -> None:
        if column not in examples.meta:
            raise DataError(f"Cannot split by '{column}': {source} has no '{column}' column (columns: "
                            f"{', '.join(sorted(examples.meta)) or 'none'}); use a manifest with that column "
                            "(key data.split_by, --split-by).")

    def to_examples(self, items, classes: list[str]) -> Examples:
        """The examples of what :meth:`read_split` gave; by default they already are."""
        return items

    def derive_defaults(self) -> None:
        """Fill recipe values left to the data (``auto``) before anything is read, from the
        training files themselves (text columns, clip length); the run saves the recipe with
        them, so it reproduces the run."""

    #: A decision threshold chosen on validation data and saved with the run (classification).
    threshold: Any = None

    def check_decision(self, classes: list[str]) -> None:
        """Check recipe values that decide predictions (positive class, threshold) before training."""

    def choose_threshold(self, val_metrics: dict) -> None:
        """Keep what the validation metrics chose for the test set and later evaluations."""

    def input_summary(self, train: Examples, parts: ModelParts | None = None) -> dict:
        """What the inputs look like next to what the model is fed (for the data summary)."""
        return {}

    def targets(self, examples: Examples):
        """What training feeds the model as ``y``: by default the examples' labels (a class, a
        label vector or a mask per example). A task with several targets per example returns a
        dict of arrays with one row per example (the pipeline batches it like inputs)."""
        return examples.y

    #: The metric a classic baseline is compared with on validation data (a key of ``evaluate``).
    primary_metric = ""
    #: Whether ``strategy: auto`` also tries input sizes, flips and pooling (image classification).
    strategy_inputs = False
    #: ``epochs: auto``: the optimizer steps a phase aims at and its fewest and most epochs, for a
    #: frozen phase (a head on cached features) and for one that trains backbone groups.
    phase_steps = {"frozen": (300, 10, 50), "trained": (150, 3, 15)}

    def strategy_variants(self) -> list[tuple[str, list[str], None]]:
        """More ``strategy: auto`` candidates that need a new build: ``(name, recipe overrides,
        None)``, each tried on the best strategy so far; none by default."""
        return []

    def shorter_sequences(self, train, parts) -> list[int]:
        """Sequence lengths below the recipe's for ``strategy: auto`` to try (text: the training
        texts' 95th-percentile token count); none by default."""
        return []

    #: Whether a phase that unfreezes the top of a functional backbone may train on the cached
    #: output of the frozen part below it (:mod:`tlmulti.training.cut`): True under
    #: ``cache_features: auto``, "on request" only under ``cache_features: true``, False never.
    cut_cache = False
    #: What the cut's training views are, in :meth:`cut_views`'s records and messages.
    cut_view_names = "flips"

    #: Whether ``calibration: temperature`` applies (class probabilities out of ``probabilities``).
    calibratable = False
    #: What ``--tta`` averages over flipped views (:mod:`tlmulti.evaluation.tta`): "labels" (class
    #: probabilities), "maps" (per-pixel outputs, flipped back) or "boxes" (detections, flipped
    #: back and suppressed together); None: no test-time augmentation for this task.
    tta_output = None

    def cut_views(self, parts) -> tuple[list, bool, bool]:
        """``(views, others, paired)`` of a phase on the cached cut (:mod:`tlmulti.training.cut`):
        the ``(vertical, horizontal[, quarter_turns])`` transforms that the random input
        augmentation draws from uniformly and that the cut caches as views of each training
        example (no transform first; only that one without such augmentation), whether any other
        random augmentation is on, and whether the targets are turned with the input (masks).
        By default: the flips of the model's ``RandomFlip`` layer; anything else is other."""
        from tlmulti.layers.views import flip_views, random_preprocessing

        flips, others = flip_views(parts.augment)
        others = others or parts.augment_pairs is not None or bool(random_preprocessing(parts.preprocess))
        return flips, others, False

    def with_tta(self, model, axes):
        """The model whose predictions average the identity and the flips ``axes`` of the input."""
        from tlmulti.evaluation import tta

        if self.tta_output == "boxes":  # per-anchor outputs: the task's decoder knows the anchors
            size = self.image_size()
            return tta.detection_tta_model(model, axes, self.decoder(model).anchor_config.anchors(size), size)
        return tta.tta_model(model, axes, maps=self.tta_output == "maps")

    def baseline_features(self, examples: Examples):
        """``(method, kind, features)`` for the classic baseline (:mod:`tlmulti.evaluation.baseline`):
        a key of its ``METHODS``, ``"dense"`` or ``"text"``, and one row per example; None where
        the task has no classic counterpart."""
        return None

    def stratify_labels(self, examples: Examples) -> np.ndarray:
        return np.asarray(examples.y)

    # -- model ----------------------------------------------------------------------------------
    def build(self, classes: list[str]) -> ModelParts:
        raise NotImplementedError

    def load_backbone(self, input_shape=None, feature_layers=None):
        from tlmulti.backbones import load_backbone

        return load_backbone(self.spec, weights=self.recipe.backbone.weights, input_shape=input_shape,
                             output_layer=self.recipe.backbone.output_layer, feature_layers=feature_layers)

    def compile_args(self) -> dict:
        raise NotImplementedError

    def class_weight(self, examples: Examples) -> dict | None:
        return None

    def training_examples(self, train: Examples) -> Examples:
        """What the training phases draw from ``train`` (segmentation repeats rare-foreground tiles)."""
        return train

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model, examples: Examples, group_by: str | None = None) -> dict:
        raise NotImplementedError

    # -- domain adaptation ----------------------------------------------------------------------
    #: The adaptation methods this task's models can take (None: every registered one), and
    #: whether its target predictions have the label-free score ``adaptation.method: auto`` ranks.
    adaptation_methods: tuple[str, ...] | None = None
    label_free_score = True

    def guard_metric(self) -> str:
        """The metric the adaptation guard watches on the source validation set."""
        return self.compile_args()["metrics"][0].name

    def guard_value(self, model, examples: Examples, batch_size: int) -> float:
        """:meth:`guard_metric` of ``model`` on labelled ``examples``."""
        from tlmulti.data.pipeline import make_dataset

        compiled = self.compile_args()
        model.compile(loss=compiled["loss"], metrics=compiled["metrics"][:1])
        ds = make_dataset(examples.x, self.targets(examples), batch_size, indices=np.arange(len(examples)))
        return float(model.evaluate(ds, return_dict=True, verbose=0)[self.guard_metric()])

    def report(self, run_dir, model, examples: Examples, metrics: dict) -> list[str]:
        """Write plots for a test set into ``run_dir``; return the file names written."""
        return []

    def worst_examples(self, model, examples: Examples, k: int = 16) -> list[dict]:
        """The ``k`` examples with the highest loss (the report's "most wrong"), as dicts
        ``{"name", "true", "predicted", "probability", "loss", "kind", <content>}``."""
        return []

    def predict(self, model, items: list[str], top_k: int = 3, out_dir=None) -> list[dict]:
        raise NotImplementedError

    #: Whether :meth:`explain` writes saliency maps (``predict --explain``).
    explains = False
    #: What ``predict --explain`` prints at the end (``{n}``: inputs, ``{dir}``: the folder).
    explain_note = "Heatmaps (Grad-CAM): {n} .npy and .png in {dir}"

    def explain(self, model, items: list[str], out_dir) -> list[dict]:
        """Write a saliency map per input to ``out_dir``: ``{"input", "label", ...}`` each, in
        :meth:`predict`'s order; the keys besides ``input`` and ``label`` (``heatmap``,
        ``saliency``, ``attributions``...) join the prediction's row."""
        raise NotImplementedError

    # -- printing -------------------------------------------------------------------------------
    def headline(self, metrics: dict) -> str:
        """One line for the end of training: the main test (or validation) metric."""
        raise NotImplementedError

    def format_metrics(self, metrics: dict) -> str:
        raise NotImplementedError

    def format_prediction(self, result: dict) -> str:
        raise NotImplementedError
