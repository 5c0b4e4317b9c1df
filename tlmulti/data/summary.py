"""The data summary printed before training and saved as ``data_summary.json`` in the run folder.

What a careful practitioner checks before trusting a run: how many examples each class has in
each split, whether the classes are strongly imbalanced or some have very few examples, whether
a file is listed under different labels, and how the inputs compare with what the model is fed
(image sizes and channels, text lengths against the sequence length, audio durations against the
clip length). Tasks add the input part
(:meth:`tlmulti.tasks.Task.input_summary`); this module counts and warns.

Example::

    from tlmulti.data.summary import summarize, format_summary
    summary = summarize({"train": train, "val": val, "test": test}, inputs={"channels": {"1": 3000}})
    print(format_summary(summary))
"""

from __future__ import annotations

import os

import numpy as np

IMBALANCE_RATIO = 10.0  # largest / smallest class in training: warn above this
FEW_EXAMPLES = 5  # a training class with fewer examples than this is warned about
FILES_SHOWN = 3  # files named in a warning


def conflicting_labels(splits: dict) -> dict[str, list[str]]:
    """Files (the ``path`` column) listed under more than one label, over all ``splits``:
    path -> its labels (a multi-label example's label is its set of classes)."""
    labels: dict[str, set] = {}
    for examples in splits.values():
        y = None if examples is None else examples.y
        paths = None if examples is None else examples.meta.get("path")
        if y is None or not paths or np.ndim(y) not in (1, 2):
            continue
        y = np.asarray(y)
        for path, row in zip(paths, y):
            label = examples.classes[int(row)] if y.ndim == 1 else \
                "|".join(c for c, v in zip(examples.classes, row) if v) or "(none)"
            if path is not None:
                labels.setdefault(os.path.normpath(str(path)), set()).add(label)
    return {p: sorted(v) for p, v in labels.items() if len(v) > 1}


def class_counts(examples) -> dict[str, int] | None:
    """Examples per class (classification), or None when labels are not class ids per example."""
    y = getattr(examples, "y", None)
    if y is None or np.ndim(y) != 1:
        return None
    counts = np.bincount(np.asarray(y, dtype=int), minlength=len(examples.classes))
    return {c: int(n) for c, n in zip(examples.classes, counts)}


def summarize(splits: dict, inputs: dict | None = None, warnings: list[str] | None = None) -> dict:
    """``{"splits": {name: {"n", "per_class"}}, "warnings": [...], "inputs": {...}}`` for the
    given splits (``None`` entries are skipped)."""
    out = {"splits": {}, "warnings": list(warnings or []), "inputs": dict(inputs or {})}
    conflicts = conflicting_labels(splits)
    if conflicts:
        shown = ", ".join(f"{p} ({', '.join(v)})" for p, v in list(conflicts.items())[:FILES_SHOWN])
        more = f" and {len(conflicts) - FILES_SHOWN} more" if len(conflicts) > FILES_SHOWN else ""
        out["warnings"].append(
            f"{len(conflicts)} file(s) listed under different labels: {shown}{more}; give each file one "
            "label in the manifest.")
    for name, examples in splits.items():
        if examples is None:
            continue
        entry = {"n": int(len(examples))}
        counts = class_counts(examples)
        if counts is not None:
            entry["per_class"] = counts
        out["splits"][name] = entry
    train = out["splits"].get("train", {}).get("per_class")
    if train:
        present = {c: n for c, n in train.items() if n}
        if present and max(present.values()) > IMBALANCE_RATIO * min(present.values()):
            big = max(present, key=present.get)
            small = min(present, key=present.get)
            out["warnings"].append(
                f"Strong class imbalance in training: '{big}' has {present[big]} examples, '{small}' "
                f"{present[small]}; consider data.class_weight: balanced and read per-class recall.")
        few = sorted(c for c, n in train.items() if n < FEW_EXAMPLES)
        if few:
            out["warnings"].append(
                f"Classes with fewer than {FEW_EXAMPLES} training examples: {', '.join(few)}; their "
                "results will be noisy (add examples if you can).")
    val = out["splits"].get("val", {}).get("per_class")
    if train and val:
        absent = sorted(c for c, n in val.items() if n == 0 and train.get(c))
        if absent:
            out["warnings"].append(
                f"Classes without a validation example: {', '.join(absent)} (too few to split); early "
                "stopping and validation metrics do not see them.")
    return out


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and len(v) <= 12:
            rows.extend(_flat(v, key + "."))
        elif isinstance(v, dict):
            top = sorted(v.items(), key=lambda kv: -kv[1] if isinstance(kv[1], (int, float)) else 0)[:8]
            rows.append((key, ", ".join(f"{a}: {b}" for a, b in top) + f" (+{len(v) - 8} more)"))
        else:
            rows.append((key, v))
    return rows


def format_summary(summary: dict) -> str:
    """A few lines for the terminal."""
    lines = ["Data summary"]
    for name, entry in summary["splits"].items():
        per = entry.get("per_class")
        if per:
            shown = ", ".join(f"{c} {n}" for c, n in list(per.items())[:12])
            more = f", ... ({len(per)} classes)" if len(per) > 12 else ""
            lines.append(f"  {name:<5} {entry['n']:>7} examples: {shown}{more}")
        else:
            lines.append(f"  {name:<5} {entry['n']:>7} examples")
    for key, value in _flat(summary.get("inputs", {})):
        lines.append(f"  {key}: {value}")
    for w in summary.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
