"""Multi-label image classification: one image, any number of findings.

Data: a manifest (CSV / TSV / JSONL) with ``path`` and ``labels``, the labels of each image
joined by ``|`` (``effusion|nodule``; empty for none); ``data.labels_column`` and
``data.separator`` change both. The classes are every label seen in the training data, sorted.
The head has one sigmoid output per label, trained with binary cross-entropy (or binary focal
loss with ``head.loss: focal``); everything else (backbones, phases, feature cache, readers for
DICOM / NIfTI / 16-bit images, split_by, export, reports) is image classification's.

Metrics: per-label AUROC, AUPRC, and precision / recall / F1 at a per-label threshold chosen on
the validation data (best F1; saved with the run, or ``data.threshold`` for every label); macro
AUROC (with a bootstrap interval), macro / micro F1, subset accuracy and label accuracy.

Example::

    tlmulti vision train --task multilabel_image_classification --data findings.csv --out runs/ml
"""

from __future__ import annotations

import numpy as np

from tlmulti.data import Examples
from tlmulti.errors import DataError, RecipeError
from tlmulti.tasks.image_classification import ImageClassification


class MultiLabelImageClassification(ImageClassification):
    name = "multilabel_image_classification"
    output_activation = "sigmoid"
    primary_metric = "macro_auroc"

    # -- data -----------------------------------------------------------------------------------
    def read_paths(self, ref, classes=None, labelled=True) -> Examples:
        from tlmulti.data import resolve_source
        from tlmulti.data.images import CLASSIFICATION_SUFFIXES
        from tlmulti.data.manifest import rows_from

        data = self.recipe.data
        source = resolve_source(ref)
        if source.is_dir() and not labelled:  # unlabelled images (adaptation target data)
            return super().read_paths(ref, classes, labelled=False)
        if source.is_dir():
            raise DataError(f"Multi-label data '{source}' must be a manifest with 'path' and "
                            f"'{data.labels_column}' columns (labels joined by '{data.separator}'), not a folder.")
        rows = rows_from(source, CLASSIFICATION_SUFFIXES, required=("path",), label_column=data.labels_column,
                         path_column=data.path_column)  # an empty labels cell is an image without findings
        if labelled and rows and "label" not in rows[0]:
            raise DataError(f"Manifest '{source}' has no '{data.labels_column}' column (labels joined by "
                            f"'{data.separator}'); set data.labels_column to the column that holds them.")
        sets = [[t.strip() for t in str(r.get("label") or "").split(data.separator) if t.strip()] for r in rows]
        if classes is None:
            classes = sorted(set().union(*sets))
            if not classes and labelled:
                raise DataError(f"Manifest '{source}' has no labels in column '{data.labels_column}'.")
        index = {c: i for i, c in enumerate(classes)}
        y = np.zeros((len(rows), len(classes)), np.float32)
        for i, (row, labels) in enumerate(zip(rows, sets)):
            for label in labels:
                if label not in index:
                    raise DataError(f"'{row['path']}' in '{source}' has label '{label}', which the model does "
                                    f"not know (labels: {', '.join(classes)}).")
                y[i, index[label]] = 1.0
        meta = {"path": [r["path"] for r in rows]}
        for key in rows[0] if rows else ():
            if key not in ("path", "label"):
                meta[key] = [r.get(key) for r in rows]
        examples = Examples(x=np.asarray(meta["path"], dtype=object), y=y if labelled else None,
                            classes=list(classes), meta=meta)
        return examples

    def stratify_labels(self, examples: Examples) -> np.ndarray:
        """For stratified splits: each example's rarest label (the number of labels for none)."""
        y = np.asarray(examples.y)
        counts = y.sum(axis=0)
        rarity = np.where(y > 0, counts[None, :], np.inf)
        return np.where(y.any(axis=1), rarity.argmin(axis=1), y.shape[1])

    def class_weight(self, examples: Examples) -> dict | None:
        if self.recipe.data.class_weight:
            raise RecipeError("Key 'data.class_weight' does not apply to multi-label data; use head.loss: focal.")
        return None

    # -- model ----------------------------------------------------------------------------------
    def compile_args(self) -> dict:
        import keras

        head = self.recipe.head
        if getattr(head, "loss", "crossentropy") == "focal":
            loss = keras.losses.BinaryFocalCrossentropy(gamma=head.focal_gamma, label_smoothing=head.label_smoothing)
        else:
            loss = keras.losses.BinaryCrossentropy(label_smoothing=head.label_smoothing)
        return {"loss": loss, "metrics": [keras.metrics.BinaryAccuracy(name="accuracy"),
                                          keras.metrics.AUC(multi_label=True, name="auroc")]}

    # -- evaluation -----------------------------------------------------------------------------
    def check_decision(self, classes: list[str]) -> None:
        data = self.recipe.data
        if data.positive_class:
            raise RecipeError("Key 'data.positive_class' does not apply to multi-label data (every label is scored).")
        self.check_threshold()

    def metrics_from(self, probs, examples: Examples, group_by: str | None = None) -> dict:
        from tlmulti.evaluation.classification import grouped_accuracy
        from tlmulti.evaluation.multilabel import multilabel_metrics

        self.check_decision(examples.classes)
        data, ev = self.recipe.data, self.recipe.evaluation
        thresholds, source = None, "given"
        if data.threshold is not None:
            thresholds, source = [float(data.threshold)] * len(examples.classes), "data.threshold"
        elif self.threshold is not None:
            thresholds, source = self.threshold, "validation data (best F1 per label)"
        out = multilabel_metrics(examples.y, probs, examples.classes, thresholds,
                                 bootstrap=ev.bootstrap, seed=self.recipe.seed,
                                 threshold_from=source)
        column = self.group_column(examples, group_by)
        if column:
            pred = (np.asarray(probs) >= np.asarray(out["thresholds"])[None, :])
            exact = (pred == (np.asarray(examples.y) > 0)).all(axis=1).astype(int)
            out.update(grouped_accuracy(np.ones(len(exact), int), exact, examples.meta[column], column))
        return out

    def choose_threshold(self, val_metrics: dict) -> None:
        if self.recipe.data.threshold is None and val_metrics.get("thresholds"):
            self.threshold = list(val_metrics["thresholds"])

    def _thresholds(self) -> np.ndarray:
        t = self.recipe.data.threshold if self.recipe.data.threshold is not None else self.threshold
        if t is None:
            t = 0.5
        return np.broadcast_to(np.asarray(t, np.float64), (len(self.classes),))

    def report(self, run_dir, model, examples, metrics) -> list[str]:
        return []

    def worst_examples(self, model, examples: Examples, k: int = 16, probs=None) -> list[dict]:
        probs = np.clip(self.probabilities(model, examples.x) if probs is None else probs, 1e-7, 1 - 1e-7)
        y = np.asarray(examples.y)
        losses = -(y * np.log(probs) + (1 - y) * np.log(1 - probs)).mean(axis=1)
        thresholds = self._thresholds()
        out = []
        for i in np.argsort(-losses)[:k]:
            path = (examples.meta.get("path") or [None] * len(y))[i]
            true = [c for c, v in zip(examples.classes, y[i]) if v > 0]
            predicted = [c for c, p, t in zip(examples.classes, probs[i], thresholds) if p >= t]
            out.append({"name": str(path).rsplit("/", 1)[-1] if path else f"#{i}",
                        "true": "|".join(true) or "(none)", "predicted": "|".join(predicted) or "(none)",
                        "probability": float(probs[i].max()), "loss": float(losses[i]),
                        **self.example_content(examples, int(i))})
        correct = ((probs >= thresholds[None, :]) == (y > 0)).all(axis=1) & (y > 0).any(axis=1)
        return self.with_saliency(model, examples, out, probs, correct)

    def predict(self, model, items: list[str], top_k: int = 3, out_dir=None) -> list[dict]:
        x, names = self.read_inputs(items)
        probs = self.probabilities(model, x)
        thresholds = self._thresholds()
        out = []
        for name, p in zip(names, probs):
            order = np.argsort(-p)[:top_k]
            out.append({"input": name, "labels": [c for c, v, t in zip(self.classes, p, thresholds) if v >= t],
                        "top": [{"label": self.classes[i], "probability": float(p[i])} for i in order]})
        return out

    def headline(self, metrics: dict) -> str:
        section, m = ("test", metrics["test"]) if metrics.get("test") else ("val", metrics.get("val", {}))
        auc = m.get("macro_auroc")
        return (f"{section} macro AUROC {auc if auc is not None else float('nan'):.4f}  macro F1 "
                f"{m.get('macro_f1', float('nan')):.4f}  subset accuracy {m.get('subset_accuracy', float('nan')):.4f}")

    def format_metrics(self, metrics: dict) -> str:
        ci = (metrics.get("ci") or {}).get("macro_auroc")
        auc = metrics.get("macro_auroc")
        lines = [f"macro AUROC      {auc if auc is not None else float('nan'):.4f}"
                 + (f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""),
                 f"macro F1         {metrics['macro_f1']:.4f}", f"micro F1         {metrics['micro_f1']:.4f}",
                 f"subset accuracy  {metrics['subset_accuracy']:.4f}", f"label accuracy   {metrics['label_accuracy']:.4f}",
                 f"examples         {metrics['n']}  (thresholds: {metrics['threshold_from']})", "",
                 f"{'label':<24}{'AUROC':>8}{'AUPRC':>8}{'thresh':>8}{'prec':>8}{'recall':>8}{'f1':>8}{'support':>9}"]
        for name, c in metrics["per_class"].items():
            fmt = lambda v: f"{v:>8.3f}" if v is not None else f"{'-':>8}"  # noqa: E731
            lines.append(f"{name[:23]:<24}{fmt(c['auroc'])}{fmt(c['auprc'])}{c['threshold']:>8.3f}"
                         f"{c['precision']:>8.3f}{c['recall']:>8.3f}{c['f1']:>8.3f}{c['support']:>9}")
        return "\n".join(lines)

    def format_prediction(self, result: dict) -> str:
        tops = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top"])
        return f"{result['input']}: {'|'.join(result['labels']) or '(none)'}  ({tops})"
