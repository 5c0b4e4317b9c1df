"""Classification metrics: accuracy, loss, macro F1, per-class precision / recall / F1, the
confusion matrix, the ranking and calibration metrics clinical users expect (AUROC, AUPRC,
sensitivity / specificity at a threshold, ECE, bootstrap confidence intervals; computed with
scikit-learn) and, when a group column is given (domain, accent, speaker), the accuracy of each
group and the worst one."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true, probs, classes, groups=None, positive: int | None = None,
                           threshold: float | None = None, bootstrap: int = 0, seed: int = 0,
                           bins: int = 15, threshold_from: str = "given") -> dict:
    """Metrics of predicted class probabilities ``probs`` (N, C) against integer labels.

    Besides accuracy, loss, macro F1, per-class precision/recall/F1 and the confusion matrix: the
    ranking and calibration metrics of :func:`clinical_metrics` (AUROC, AUPRC, sensitivity and
    specificity at ``threshold`` for two classes, ECE, bootstrap intervals when ``bootstrap``)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    n_classes = len(classes)
    labels = list(range(n_classes))
    cm = confusion_matrix(y_true, pred, labels=labels) if len(y_true) else np.zeros((n_classes, n_classes), int)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0) if len(y_true) else ([0.0] * n_classes,) * 3 + ([0] * n_classes,)
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(classes)}
    present = [f1[i] for i in labels if support[i]]
    eps = 1e-7
    loss = -np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))) if len(y_true) else 0.0
    out = {
        "accuracy": float((pred == y_true).mean()) if len(y_true) else 0.0,
        "loss": float(loss),
        "macro_f1": float(np.mean(present)) if present else 0.0,
        "n": int(len(y_true)),
        "per_class": per_class,
        "confusion_matrix": np.asarray(cm).tolist(),
    }
    if n_classes == 2:
        out["f1"] = per_class[classes[1 if positive is None else positive]]["f1"]
    if len(y_true):
        out.update(clinical_metrics(y_true, probs, classes, positive=positive, threshold=threshold,
                                    bootstrap=bootstrap, seed=seed, bins=bins, threshold_from=threshold_from))
    if groups is not None:
        column, values = groups
        out.update(grouped_accuracy(y_true, pred, values, column))
    return out


def auroc(y_true, probs, positive: int | None = None) -> float | None:
    """AUROC of class ``positive`` (two classes) or the macro one-vs-rest AUROC over the classes
    that have both positive and negative examples; None when no class has both."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if probs.shape[1] == 2 or positive is not None:
        c = 1 if positive is None else positive
        return float(roc_auc_score(y_true == c, probs[:, c])) if 0 < (y_true == c).sum() < len(y_true) else None
    scores = [roc_auc_score(y_true == c, probs[:, c]) for c in range(probs.shape[1])
              if 0 < (y_true == c).sum() < len(y_true)]
    return float(np.mean(scores)) if scores else None


def youden_threshold(y_true, scores) -> float:
    """The score threshold that maximises Youden's J (sensitivity + specificity - 1) on these examples."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y_true, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def calibration(y_true, probs, bins: int = 15) -> dict:
    """Expected calibration error of the top-class confidence over ``bins`` equal-width bins, and
    the bins themselves (for the reliability diagram)."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece, rows = 0.0, []
    for b in range(bins):
        mask = which == b
        if mask.any():
            acc, mean_conf = float(correct[mask].mean()), float(conf[mask].mean())
            ece += mask.mean() * abs(acc - mean_conf)
            rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(mask.sum()),
                         "accuracy": acc, "confidence": mean_conf})
    return {"ece": float(ece), "bins": rows}


def clinical_metrics(y_true, probs, classes, positive: int | None = None, threshold: float | None = None,
                     bootstrap: int = 0, seed: int = 0, bins: int = 15, threshold_from: str = "given") -> dict:
    """AUROC (of the positive class for two classes, macro one-vs-rest otherwise); for two classes
    also AUPRC, and sensitivity / specificity at ``threshold`` on the positive probability (Youden's
    J on these examples when None); ECE; with ``bootstrap`` resamples (seeded), 95% percentile
    intervals for accuracy and AUROC."""
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    out = {"auroc": auroc(y_true, probs)}
    if len(classes) == 2:
        pos = 1 if positive is None else positive
        is_pos = y_true == pos
        out["positive_class"] = classes[pos]
        out["auprc"] = float(average_precision_score(is_pos, probs[:, pos])) if is_pos.any() else None
        out["auroc"] = auroc(y_true, probs, pos)
        chosen = threshold
        if chosen is None:
            chosen = youden_threshold(is_pos, probs[:, pos]) if 0 < is_pos.sum() < len(is_pos) else 0.5
            out["threshold_from"] = "these examples (Youden's J)"
        else:
            out["threshold_from"] = threshold_from
        called = probs[:, pos] >= chosen
        out["threshold"] = float(chosen)
        out["sensitivity"] = float(called[is_pos].mean()) if is_pos.any() else None
        out["specificity"] = float((~called[~is_pos]).mean()) if (~is_pos).any() else None
    cal = calibration(y_true, probs, bins)
    out["ece"] = cal["ece"]
    out["calibration"] = cal["bins"]
    if bootstrap:
        pos = (1 if positive is None else positive) if len(classes) == 2 else None
        accs, aurocs = _bootstrap(y_true, probs, pos, bootstrap, seed)
        out["ci"] = {"level": 0.95, "resamples": int(bootstrap), "seed": int(seed),
                     "accuracy": [float(v) for v in np.percentile(accs, [2.5, 97.5])],
                     "auroc": [float(v) for v in np.nanpercentile(aurocs, [2.5, 97.5])]
                     if np.isfinite(aurocs).any() else None}
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


def _rank_auroc(positive, scores) -> np.ndarray:
    """AUROC of each row (Mann-Whitney U from average ranks, as scikit-learn's ties give); NaN
    where a row has no positive or no negative."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1)
    n_neg = positive.shape[1] - n_pos
    u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _bootstrap(y_true, probs, positive, resamples: int, seed: int, chunk: int = 100):
    """Accuracy and AUROC (of ``positive``, or macro one-vs-rest) of ``resamples`` seeded bootstrap
    resamples, computed a chunk of resamples at a time."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    correct = probs.argmax(axis=1) == y_true
    classes = [positive] if positive is not None else range(probs.shape[1])
    accs, aurocs = [], []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, (min(chunk, resamples - start), n))
        accs.append(correct[idx].mean(axis=1))
        per_class = np.stack([_rank_auroc(y_true[idx] == c, probs[idx, c]) for c in classes])
        aurocs.append(_nanmean_rows(per_class))
    return np.concatenate(accs), np.concatenate(aurocs)


def _nanmean_rows(values) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN where a column has no value."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
