"""Multi-label metrics: per-label AUROC, F1 at a threshold per label (chosen on validation data
for the best F1), and their macro means."""

from __future__ import annotations

import numpy as np


from tlmulti.evaluation.classification import _nanmean_rows, _rank_auroc


def best_f1_threshold(y_true, scores) -> float:
    """The score threshold with the highest F1 on these examples (0.5 when there is no positive)."""
    from sklearn.metrics import precision_recall_curve

    y_true = np.asarray(y_true).astype(bool)
    if not y_true.any():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def multilabel_metrics(y_true, probs, classes, thresholds=None, bootstrap: int = 0, seed: int = 0,
                       threshold_from: str = "given") -> dict:
    """Metrics of independent per-label probabilities ``probs`` (N, L) against multi-hot labels.

    Per label: AUROC, AUPRC and, at its threshold (``thresholds[i]``, or the F1-best threshold on
    these examples when None), precision, recall, F1. Overall: macro AUROC / AUPRC / F1, micro F1,
    subset accuracy (every label right) and label accuracy; with ``bootstrap``, a 95% interval of
    the macro AUROC."""
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    chosen = [None] * len(classes) if thresholds is None else list(thresholds)
    source = threshold_from if thresholds is not None else "these examples (best F1 per label)"
    chosen = [best_f1_threshold(y_true[:, i], probs[:, i]) if t is None else float(t) for i, t in enumerate(chosen)]
    pred = (probs >= np.asarray(chosen)[None, :]).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, pred, zero_division=0)
    per_class, aurocs, auprcs = {}, [], []
    for i, name in enumerate(classes):
        both = 0 < y_true[:, i].sum() < len(y_true)
        auc = float(roc_auc_score(y_true[:, i], probs[:, i])) if both else None
        ap = float(average_precision_score(y_true[:, i], probs[:, i])) if y_true[:, i].any() else None
        if auc is not None:
            aurocs.append(auc)
        if ap is not None:
            auprcs.append(ap)
        per_class[name] = {"auroc": auc, "auprc": ap, "threshold": chosen[i], "precision": float(precision[i]),
                           "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
    eps = 1e-7
    p = np.clip(probs, eps, 1 - eps)
    out = {
        "n": int(len(y_true)),
        "loss": float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p))) if len(y_true) else 0.0,
        "subset_accuracy": float((pred == y_true).all(axis=1).mean()) if len(y_true) else 0.0,
        "label_accuracy": float((pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "macro_auprc": float(np.mean(auprcs)) if auprcs else None,
        "macro_f1": float(np.mean([f1[i] for i in range(len(classes)) if support[i]])) if support.any() else 0.0,
        "micro_f1": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "thresholds": chosen, "threshold_from": source, "per_class": per_class,
    }
    if bootstrap and len(y_true):
        rng = np.random.default_rng(seed)
        values = []
        for start in range(0, bootstrap, 100):
            idx = rng.integers(0, len(y_true), (min(100, bootstrap - start), len(y_true)))
            values.append(_nanmean_rows(np.stack([_rank_auroc(y_true[idx, i] > 0, probs[idx, i])
                                                  for i in range(len(classes))])))
        values = np.concatenate(values)
        out["ci"] = {"level": 0.95, "resamples": int(bootstrap), "seed": int(seed),
                     "macro_auroc": [float(v) for v in np.nanpercentile(values, [2.5, 97.5])]
                     if np.isfinite(values).any() else None}
    return out
