"""Classification, shared by image, text and speech classification: a softmax head over the
backbone's pooled features, accuracy, macro F1, top-k predictions, clinical metrics (AUROC,
sensitivity / specificity at a threshold chosen on validation data) and per-group accuracy."""

from __future__ import annotations

import numpy as np

from tlmulti.data import Examples
from tlmulti.errors import RecipeError, TlmultiError
from tlmulti.tasks.base import Task


class ClassificationTask(Task):
    """Shared by image, text and speech classification: softmax head, accuracy, F1, top-k."""

    output_activation = "softmax"
    calibratable = True

    @property
    def primary_metric(self) -> str:
        """AUROC where the recipe names the positive class of two (a finding to detect, where a
        threshold is chosen later), else accuracy: what the strategy search and the baseline
        warning compare."""
        return "auroc" if getattr(self.recipe.data, "positive_class", None) else "accuracy"

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
        from tlmulti.evaluation.classification import classification_metrics

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
            plot_reliability(metrics["calibration"], metrics["ece"], run_dir / "reliability.png",
                             before=metrics.get("uncalibrated"))
            written.append("reliability.png")
        return written

    def worst_examples(self, model, examples: Examples, k: int = 16, probs=None) -> list[dict]:
        probs = self.probabilities(model, examples.x) if probs is None else probs
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
