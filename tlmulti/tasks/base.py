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
from tlmulti.errors import DataError, RecipeError, TlmultiError
from tlmulti.recipe import DataConfig, HeadConfig, Recipe


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


class Task:
    """Base class: subclasses set ``name``, ``family``, configs, and implement ``read``/``build``."""

    name = ""
    family = ""
    data_config = DataConfig
    head_config = HeadConfig

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
        test = self.to_examples(*self.read_split(data.test, classes)) if data.test else None
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

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model, examples: Examples, group_by: str | None = None) -> dict:
        raise NotImplementedError

    def report(self, run_dir, model, examples: Examples, metrics: dict) -> list[str]:
        """Write plots for a test set into ``run_dir``; return the file names written."""
        return []

    def worst_examples(self, model, examples: Examples, k: int = 16) -> list[dict]:
        """The ``k`` examples with the highest loss (the report's "most wrong"), as dicts
        ``{"name", "true", "predicted", "probability", "loss", "kind", <content>}``."""
        return []

    def predict(self, model, items: list[str], top_k: int = 3, out_dir=None) -> list[dict]:
        raise NotImplementedError

    # -- printing -------------------------------------------------------------------------------
    def headline(self, metrics: dict) -> str:
        """One line for the end of training: the main test (or validation) metric."""
        raise NotImplementedError

    def format_metrics(self, metrics: dict) -> str:
        raise NotImplementedError

    def format_prediction(self, result: dict) -> str:
        raise NotImplementedError


class ClassificationTask(Task):
    """Shared by image, text and speech classification: softmax head, accuracy, F1, top-k."""

    output_activation = "softmax"

    def compile_args(self) -> dict:
        import keras

        from tlmulti.heads.classification import classification_loss

        head = self.recipe.head
        return {"loss": classification_loss(getattr(head, "label_smoothing", 0.0), getattr(head, "loss", "crossentropy"),
                                            getattr(head, "focal_gamma", 2.0)),
                "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}

    def class_weight(self, examples: Examples) -> dict | None:
        if self.recipe.data.class_weight != "balanced":
            return None
        counts = np.bincount(examples.y, minlength=len(examples.classes)).astype(float)
        weights = len(examples.y) / (len(counts) * np.maximum(counts, 1))
        return {i: float(w) for i, w in enumerate(weights)}

    def read_files(self, ref, classes, labelled, suffixes, list_files, load) -> Examples:
        """Examples from class folders or a ``path,label`` manifest of files (images, audio).

        ``list_files(folder)`` lists an unlabelled folder without class sub-folders and
        ``load(paths)`` turns paths into the input array. Extra manifest columns become metadata.
        """
        from tlmulti.data import resolve_source
        from tlmulti.data.examples import reader_labels
        from tlmulti.data.manifest import rows_from

        source = resolve_source(ref)
        data = self.recipe.data
        if not labelled and source.is_dir() and not any(p.is_dir() for p in source.iterdir()):
            rows = [{"path": str(p)} for p in list_files(source)]
        else:
            rows = rows_from(source, suffixes, required=("path", "label") if labelled else ("path",),
                             label_column=data.label_column, path_column=data.path_column)
        paths = [r["path"] for r in rows]
        y, classes = reader_labels([r.get("label") for r in rows], classes, labelled, str(source))
        meta = {"path": paths}
        for key in rows[0]:
            if key not in ("path", "label"):
                meta[key] = [r.get(key) for r in rows]
        return Examples(x=load(paths), y=y, classes=classes, meta=meta)

    def build_head(self, backbone, num_classes: int):
        from tlmulti.heads.classification import classification_head

        head = self.recipe.head
        normalize = getattr(head, "normalize", "none")
        if normalize == "auto":
            normalize = self.spec.input.get("feature_normalize", "none")
        return classification_head(backbone.output, num_classes, head, normalize=normalize,
                                   activation=self.output_activation)

    def probabilities(self, model, x) -> np.ndarray:
        from tlmulti.data.pipeline import make_dataset

        ds = make_dataset(x, None, self.recipe.data.batch_size)
        return np.asarray(model.predict(ds, verbose=0))

    def group_column(self, examples: Examples, group_by: str | None = None) -> str | None:
        """The column to report groups of: ``group_by`` (an error when the data lacks it), else
        the recipe's ``data.group_column`` when the data has it."""
        if group_by:
            if group_by not in examples.meta:
                raise TlmultiError(
                    f"Cannot group by '{group_by}': the data has no such column "
                    f"(columns: {', '.join(sorted(examples.meta)) or 'none'})."
                )
            return group_by
        column = self.recipe.data.group_column
        return column if column and column in examples.meta else None

    def check_decision(self, classes: list[str]) -> None:
        """``data.positive_class`` and ``data.threshold`` fit these classes (checked before training)."""
        self.positive_index(classes)
        self.check_threshold()

    def check_threshold(self) -> None:
        threshold = self.recipe.data.threshold
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise RecipeError(f"Key 'data.threshold' must be a probability between 0 and 1, got {threshold}.")

    def positive_index(self, classes: list[str]) -> int | None:
        """Index of ``data.positive_class`` (two classes; default the second class)."""
        name = getattr(self.recipe.data, "positive_class", None)
        if len(classes) != 2:
            if name:
                raise RecipeError(f"Key 'data.positive_class' applies to two classes; this data has {len(classes)}.")
            return None
        if name is None:
            return 1
        if str(name) not in classes:
            raise RecipeError(f"Key 'data.positive_class' is '{name}', not a class of the data "
                              f"({', '.join(classes)}).")
        return classes.index(str(name))

    def metrics_from(self, probs, examples: Examples, group_by: str | None = None) -> dict:
        from tlmulti.evaluation import classification_metrics

        column = self.group_column(examples, group_by)
        groups = (column, examples.meta[column]) if column else None
        self.check_decision(examples.classes)
        threshold, source = self.recipe.data.threshold, "data.threshold"
        if threshold is None and self.threshold is not None:
            threshold, source = self.threshold, "validation data (Youden's J)"
        ev = self.recipe.evaluation
        return classification_metrics(examples.y, probs, examples.classes, groups,
                                      positive=self.positive_index(examples.classes), threshold=threshold, threshold_from=source,
                                      bootstrap=ev.bootstrap,
                                      seed=self.recipe.seed, bins=ev.calibration_bins)

    def evaluate(self, model, examples: Examples, group_by: str | None = None) -> dict:
        return self.metrics_from(self.probabilities(model, examples.x), examples, group_by)

    def choose_threshold(self, val_metrics: dict) -> None:
        """Keep the validation data's threshold (Youden's J) for the test set and later evaluations."""
        if self.recipe.data.threshold is None and val_metrics.get("threshold") is not None:
            self.threshold = val_metrics["threshold"]

    def report(self, run_dir, model, examples, metrics) -> list[str]:
        from tlmulti.reports.plots import plot_confusion_matrix, plot_reliability

        plot_confusion_matrix(metrics["confusion_matrix"], examples.classes, run_dir / "confusion_matrix.png")
        written = ["confusion_matrix.png"]
        if metrics.get("calibration"):
            plot_reliability(metrics["calibration"], metrics["ece"], run_dir / "reliability.png")
            written.append("reliability.png")
        return written

    def worst_examples(self, model, examples: Examples, k: int = 16) -> list[dict]:
        probs = self.probabilities(model, examples.x)
        y = np.asarray(examples.y)
        losses = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))
        out = []
        for i in np.argsort(-losses)[:k]:
            pred = int(probs[i].argmax())
            path = (examples.meta.get("path") or [None] * len(y))[i]
            out.append({"name": str(path).rsplit("/", 1)[-1] if path else f"#{i}",
                        "true": examples.classes[int(y[i])], "predicted": examples.classes[pred],
                        "probability": float(probs[i, pred]), "loss": float(losses[i]),
                        **self.example_content(examples, int(i))})
        return out

    def example_content(self, examples: Examples, i: int) -> dict:
        """What the report shows of example ``i``: ``{"kind": ..., "image" | "text" | "audio": ...}``."""
        return {"kind": "text", "text": str(examples.x[i])}

    def predict(self, model, items: list[str], top_k: int = 3, out_dir=None) -> list[dict]:
        x, names = self.read_inputs(items)
        probs = self.probabilities(model, x)
        classes = self.classes
        out = []
        for name, p in zip(names, probs):
            order = np.argsort(-p)[:top_k]
            out.append({"input": name, "top": [{"label": classes[i], "probability": float(p[i])} for i in order]})
        return out

    classes: list[str] = []

    def headline(self, metrics: dict) -> str:
        section, m = ("test", metrics["test"]) if metrics.get("test") else ("val", metrics.get("val", {}))
        line = f"{section} accuracy {m.get('accuracy', float('nan')):.4f}  macro F1 {m.get('macro_f1', float('nan')):.4f}"
        if m.get("positive_class") and m.get("auroc") is not None:
            line += f"  AUROC ({m['positive_class']}) {m['auroc']:.4f}"
        if "worst_group" in m:
            w = m["worst_group"]
            line += f"  worst {m['group_by']} '{w['group']}' {w['accuracy']:.4f}"
        return line

    def format_metrics(self, metrics: dict) -> str:
        ci = metrics.get("ci") or {}

        def interval(key):
            return f"  (95% CI {ci[key][0]:.4f}-{ci[key][1]:.4f})" if ci.get(key) else ""

        lines = [f"accuracy  {metrics['accuracy']:.4f}{interval('accuracy')}", f"loss      {metrics['loss']:.4f}",
                 f"macro F1  {metrics['macro_f1']:.4f}", f"examples  {metrics['n']}"]
        if metrics.get("auroc") is not None:
            lines.append(f"AUROC     {metrics['auroc']:.4f}{interval('auroc')}"
                         + (f"  of '{metrics['positive_class']}'" if "positive_class" in metrics else " (macro one-vs-rest)"))
        if metrics.get("auprc") is not None:
            lines.append(f"AUPRC     {metrics['auprc']:.4f}")
        if metrics.get("sensitivity") is not None and metrics.get("specificity") is not None:
            lines.append(f"sensitivity {metrics['sensitivity']:.4f}  specificity {metrics['specificity']:.4f}  "
                         f"at threshold {metrics['threshold']:.4f} ({metrics['threshold_from']})")
        if "ece" in metrics:
            lines.append(f"ECE       {metrics['ece']:.4f}")
        lines += ["",
                 f"{'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
        for name, c in metrics["per_class"].items():
            lines.append(f"{name[:23]:<24}{c['precision']:>10.3f}{c['recall']:>10.3f}{c['f1']:>10.3f}{c['support']:>9}")
        if "by_group" in metrics:
            lines += ["", f"{metrics['group_by']:<24}{'accuracy':>10}{'n':>9}"]
            for g, v in metrics["by_group"].items():
                lines.append(f"{g[:23]:<24}{v['accuracy']:>10.3f}{v['n']:>9}")
            w = metrics["worst_group"]
            lines.append(f"worst group: {w['group']} ({w['accuracy']:.3f})")
        return "\n".join(lines)

    def format_prediction(self, result: dict) -> str:
        tops = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top"])
        return f"{result['input']}: {tops}"
