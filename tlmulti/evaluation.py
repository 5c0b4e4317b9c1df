"""Metrics shared by every task (plots and other reports: :mod:`tlmulti.reports`).

``classification_metrics`` gives accuracy, loss, macro F1, per-class precision/recall/F1, the
confusion matrix and, when a group column is given (domain, accent, speaker), the accuracy of
each group and the worst one. ``segmentation_metrics`` gives IoU, Dice, precision and recall per
class from a pixel confusion matrix (``confusion``), and their means over the foreground.
"""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true, probs, classes, groups=None) -> dict:
    """Metrics of predicted class probabilities ``probs`` (N, C) against integer labels."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    n_classes = len(classes)
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y_true, pred), 1)
    per_class = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(cm[i, :].sum())}
        if cm[i, :].sum():
            f1s.append(f1)
    eps = 1e-7
    loss = -np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))) if len(y_true) else 0.0
    out = {
        "accuracy": float((pred == y_true).mean()) if len(y_true) else 0.0,
        "loss": float(loss),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "n": int(len(y_true)),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
    if n_classes == 2:
        out["f1"] = per_class[classes[1]]["f1"]
    if groups is not None:
        column, values = groups
        out.update(grouped_accuracy(y_true, pred, values, column))
    return out


def grouped_accuracy(y_true, pred, values, column: str) -> dict:
    """Accuracy per value of a group column, and the worst group."""
    values = np.asarray([str(v) for v in values])
    by_group = {}
    for value in sorted(set(values)):
        mask = values == value
        by_group[value] = {"accuracy": float((pred[mask] == y_true[mask]).mean()), "n": int(mask.sum())}
    worst = min(by_group, key=lambda k: by_group[k]["accuracy"])
    return {"group_by": column, "by_group": by_group,
            "worst_group": {"group": worst, "accuracy": by_group[worst]["accuracy"]}}


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Pixel confusion matrix ``cm[true, predicted]``."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(cm, classes: list[str]) -> dict:
    """IoU, Dice, precision and recall per class from a pixel confusion matrix, and their means
    over the foreground classes (all but class 0) where they are defined."""
    cm = np.asarray(cm, dtype=np.float64)
    per_class, ious, dices = {}, [], []
    for i, name in enumerate(classes):
        tp = cm[i, i]
        fp = cm[:, i].sum() - tp
        fn = cm[i, :].sum() - tp
        union = tp + fp + fn
        iou = tp / union if union else None
        dice = 2 * tp / (2 * tp + fp + fn) if union else None
        per_class[name] = {
            "iou": None if iou is None else float(iou), "dice": None if dice is None else float(dice),
            "precision": float(tp / (tp + fp)) if tp + fp else None,
            "recall": float(tp / (tp + fn)) if tp + fn else None,
            "pixels": int(cm[i, :].sum()), "predicted_pixels": int(cm[:, i].sum()),
        }
        if i > 0 or len(classes) == 1:
            if iou is not None:
                ious.append(iou)
                dices.append(dice)
    all_iou = [c["iou"] for c in per_class.values() if c["iou"] is not None]
    total = cm.sum()
    return {
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "mean_dice": float(np.mean(dices)) if dices else 0.0,
        "mean_iou_with_background": float(np.mean(all_iou)) if all_iou else 0.0,
        "pixel_accuracy": float(np.trace(cm) / total) if total else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }
