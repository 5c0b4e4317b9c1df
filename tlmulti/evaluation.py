"""Metrics and plots shared by every task.

``classification_metrics`` gives accuracy, loss, macro F1, per-class precision/recall/F1, the
confusion matrix and, when a group column is given (domain, accent, speaker), the accuracy of
each group and the worst one.
"""

from __future__ import annotations

from pathlib import Path

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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm, classes, path: Path) -> None:
    plt = _plt()
    cm = np.asarray(cm)
    size = max(4, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and the first other metric per epoch, with phase boundaries marked."""
    plt = _plt()
    keys = [k for k in history[0] if k not in ("phase", "epoch") and not k.startswith("val_")]
    keys = ["loss"] + [k for k in keys if k != "loss"][:1]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
    axes = np.atleast_1d(axes)
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(axes, keys):
        ax.plot(epochs, [r.get(key, np.nan) for r in history], "o-", label=f"train {key}")
        if any(f"val_{key}" in r for r in history):
            ax.plot(epochs, [r.get(f"val_{key}", np.nan) for r in history], "o-", label=f"val {key}")
        for prev, row in zip(history, history[1:]):
            if row["phase"] != prev["phase"]:
                ax.axvline(prev["epoch"] + 0.5, color="grey", ls="--", lw=1)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
