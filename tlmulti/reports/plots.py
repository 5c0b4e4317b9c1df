"""Plots written into run folders: the confusion matrix, the reliability diagram and the training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def plot_reliability(bins: list[dict], ece: float, path: Path, before: dict | None = None) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin (test set);
    ``before`` (``{"ece", "calibration"}`` of the model before temperature scaling) adds its
    points and ECE."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=[b["high"] - b["low"] for b in bins],
           edgecolor="black", alpha=0.7, label="accuracy" + (" (calibrated)" if before else ""))
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="black", markersize=3)
    if before:
        old = before["calibration"]
        ax.plot([b["confidence"] for b in old], [b["accuracy"] for b in old], "s--", color="tab:red", markersize=3,
                linewidth=1, label=f"before temperature scaling (ECE {before['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (test), ECE {ece:.3f}")
    ax.legend(loc="upper left", fontsize=8)
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


def plot_precision_recall(curves: dict, path: Path, title: str = "Precision-recall (test, IoU 0.5)") -> None:
    """Precision against recall per class (``{class: {"precision": [...], "recall": [...]}}``),
    detections taken in order of score; the marked point is the score threshold in use."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, c in curves.items():
        if not c.get("recall"):
            continue
        line, = ax.plot(c["recall"], c["precision"], label=f"{name} (AP50 {c.get('ap50', 0):.3f})")
        if c.get("at") is not None:
            ax.plot([c["at"][0]], [c["at"][1]], "o", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
