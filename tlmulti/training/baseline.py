"""The classic baseline of a run (:mod:`tlmulti.evaluation.baseline`), fitted on the training
split and scored on the validation and test splits with the task's own metrics.

``run_baseline`` returns what ``metrics.json`` keeps under ``baseline``::

    {"method": "logistic regression on 16x16 pixels", "val": {...}, "test": {...}, "seconds": 1.2}

and ``beats_model`` names the case the run must say aloud: the baseline's validation score above
the model's on the task's primary metric.
"""

from __future__ import annotations

import time

import numpy as np


def run_baseline(task, train, val, test, seed: int = 0) -> dict | None:
    """The baseline's record, or None when the task has no classic counterpart."""
    from tlmulti.evaluation import baseline

    start = time.perf_counter()
    part = train.subset(baseline.sample(len(train), seed))
    got = task.baseline_features(part)
    if got is None:
        return None
    method, kind, features = got
    multilabel = getattr(task, "output_activation", "softmax") == "sigmoid"
    y = np.asarray(part.y)
    if not multilabel and len(np.unique(y)) < 2:
        return None
    model = baseline.fit(features, y, kind, multilabel, seed)
    n_outputs = len(train.classes)
    out = {"method": baseline.METHODS[method]}
    kept = task.threshold
    try:
        task.threshold = None  # the baseline's own decision threshold, chosen on validation data
        for name, examples in (("val", val), ("test", test)):
            if examples is None or not len(examples):
                continue
            probs = baseline.probabilities(model, task.baseline_features(examples)[2], n_outputs, multilabel, kind)
            out[name] = task.metrics_from(probs, examples)
            if name == "val" and out[name].get("threshold") is not None and task.recipe.data.threshold is None:
                task.threshold = out[name]["threshold"]
    finally:
        task.threshold = kept
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def beats_model(metrics: dict, key: str, searched: bool = False) -> str | None:
    """One warning line when the baseline's validation ``key`` is above the model's, else None;
    ``searched``: the run's strategy came from ``strategy: auto`` or ``--tune``, so the advice
    is not to search again."""
    base = (metrics.get("baseline") or {}).get("val") or {}
    model = metrics.get("val") or {}
    if not key or base.get(key) is None or model.get(key) is None:
        return None
    if float(base[key]) > float(model[key]):
        advice = ("the strategy search already kept its best candidate: try another backbone, or more labelled data"
                  if searched else "try --strategy auto (it compares depths, rates, input sizes and flips on the "
                                   "validation data), or another backbone")
        return (f"the classic baseline ({metrics['baseline']['method']}) beats the model on validation data: "
                f"{key} {float(base[key]):.4f} against {float(model[key]):.4f}. Transfer is not paying off on this "
                f"data as configured; {advice}, and compare with the baseline in report.html.")
    return None
