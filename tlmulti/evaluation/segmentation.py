"""Segmentation metrics: IoU, Dice, precision and recall per class from a pixel confusion
matrix (:func:`confusion`), and their means over the foreground."""

from __future__ import annotations

import numpy as np


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
