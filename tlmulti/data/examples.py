"""In-memory examples with labels and metadata, and seeded stratified splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlmulti.errors import DataError


@dataclass
class Examples:
    """Inputs ``x`` (array, dict of arrays, or array of strings), labels ``y`` (class ids, masks,
    or None for unlabelled data), ``classes`` (names by id) and ``meta`` (column -> list, e.g.
    ``path``, ``domain``, ``speaker``)."""

    x: Any
    y: Any
    classes: list[str]
    meta: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        if isinstance(self.x, dict):
            return len(next(iter(self.x.values())))
        return len(self.x)

    def subset(self, idx) -> "Examples":
        idx = np.asarray(idx, dtype=int)
        take = (lambda a: {k: v[idx] for k, v in a.items()}) if isinstance(self.x, dict) else (lambda a: a[idx])
        return Examples(
            x=take(self.x),
            y=None if self.y is None else self.y[idx],
            classes=list(self.classes),
            meta={k: [v[i] for i in idx] for k, v in self.meta.items()},
        )


def encode_labels(labels, classes: list[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
    """Map label strings to ids. With ``classes`` given (evaluation), an unseen label is an error."""
    labels = [str(l) for l in labels]
    if classes is None:
        classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted(set(labels) - set(index))
    if unseen:
        raise DataError(
            f"{source}: label(s) {', '.join(repr(u) for u in unseen[:5])} never appear in the training data "
            f"(known classes: {', '.join(classes[:20])}); fix the labels or retrain with them."
        )
    return np.array([index[l] for l in labels], dtype="int32"), list(classes)


def reader_labels(labels, classes: list[str] | None, labelled: bool, source: str):
    """(y, classes) for a reader: unlabelled data gets ``y=None``; training data (``classes``
    None) must have at least two classes; evaluation data may only use known classes."""
    if not labelled:
        return None, list(classes or [])
    known = classes
    y, classes = encode_labels(labels, classes, source)
    if known is None and len(classes) < 2:
        raise DataError(f"Data '{source}' has a single class ('{classes[0]}'); classification needs at least two.")
    return y, classes


def stratified_split(labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out, at least one per class with
    two or more examples. Seeded, so the same recipe always gets the same split."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        held.extend(idx[:n])
        keep.extend(idx[n:])
    return np.sort(np.array(keep, dtype=int)), np.sort(np.array(held, dtype=int))


def group_split(labels, groups, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) where every value of ``groups`` (e.g. a patient id) lands on one
    side: about ``fraction`` of the groups held out, stratified by label as far as the groups
    allow (scikit-learn's ``StratifiedGroupKFold``; seeded)."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    groups = np.asarray([str(g) for g in groups])
    n_splits = max(2, int(round(1 / fraction)))
    n_groups = len(set(groups.tolist()))
    if n_groups < n_splits:
        raise DataError(f"Splitting by groups needs at least {n_splits} distinct groups for a validation "
                        f"fraction of {fraction}, found {n_groups}; give --val-data or raise data.val_split.")
    _, per_class = np.unique(labels, return_counts=True)
    if per_class.max() < n_splits:  # too few rows for folds (a few volumes, before their slices)
        held_groups = _few_groups_held_out(labels, groups, fraction, seed)
        held = np.isin(groups, held_groups)
        return np.flatnonzero(~held), np.flatnonzero(held)
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    return np.sort(keep), np.sort(held)


def _few_groups_held_out(labels, groups, fraction: float, seed: int) -> list[str]:
    """The groups to hold out when there are too few rows per class for folds: per class (of
    each group's most common label), about ``fraction`` of its groups, drawn with ``seed``, at
    least one where a class has two groups or more, never all of them."""
    rng = np.random.default_rng(seed)
    names = sorted(set(groups.tolist()))
    label_of = {}
    for g in names:
        values, counts = np.unique(labels[groups == g], return_counts=True)
        label_of[g] = values[counts.argmax()]
    held = []
    for label in sorted(set(label_of.values()), key=str):
        members = [g for g in names if label_of[g] == label]
        rng.shuffle(members)
        k = min(max(int(round(len(members) * fraction)), 1), len(members) - 1)
        held.extend(members[:k])
    if not held:
        raise DataError(f"Splitting by groups found one group per class ({len(names)} groups); a validation set "
                        "needs a second group of some class: give --val-data or add data.")
    return held


def limit_per_class(labels, n: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``n`` examples per class (seeded): few-shot subsets of a larger set."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        chosen.extend(idx[:n])
    return np.sort(np.array(chosen, dtype=int))


def concat(first: Examples, second: Examples) -> Examples:
    """``first`` followed by ``second`` (same classes); meta columns missing on one side are None."""
    from tlmulti.data.lazy import FileArray

    if isinstance(first.x, dict):
        x = {k: np.concatenate([first.x[k], second.x[k]]) for k in first.x}
    elif isinstance(first.x, FileArray) and isinstance(second.x, FileArray):
        x = first.x.concatenate(second.x)
    else:
        x = np.concatenate([np.asarray(first.x), np.asarray(second.x)])
    y = None if first.y is None or second.y is None else np.concatenate([first.y, second.y])
    columns = list(first.meta) + [c for c in second.meta if c not in first.meta]
    meta = {c: list(first.meta.get(c, [None] * len(first))) + list(second.meta.get(c, [None] * len(second)))
            for c in columns}
    return Examples(x=x, y=y, classes=list(first.classes), meta=meta)


def parse_holdout(rules, key: str = "data.holdout") -> list[tuple[str, str]]:
    """``["accent=en-029", ...]`` -> ``[("accent", "en-029"), ...]``; a malformed rule is an error."""
    from tlmulti.errors import RecipeError

    parsed = []
    for rule in rules or ():
        column, sep, value = str(rule).partition("=")
        if not sep or not column.strip() or not value.strip():
            raise RecipeError(
                f"Key '{key}' entries must look like COLUMN=VALUE (e.g. accent=en-029), got {rule!r}."
            )
        parsed.append((column.strip(), value.strip()))
    return parsed


def split_holdout(examples: Examples, rules, source: str = "the training data") -> tuple[Examples, Examples]:
    """(kept, held out): examples whose meta ``column`` equals ``value`` for any rule are held out.

    Example::

        train, unseen = split_holdout(train, ["accent=en-029"])
    """
    parsed = parse_holdout(rules)
    held = np.zeros(len(examples), dtype=bool)
    for column, value in parsed:
        if column not in examples.meta:
            raise DataError(
                f"Cannot hold out '{column}={value}': {source} has no '{column}' column "
                f"(columns: {', '.join(sorted(examples.meta)) or 'none'}); use a manifest with that column."
            )
        values = np.asarray([str(v) for v in examples.meta[column]])
        match = values == value
        if not match.any():
            known = sorted(set(values.tolist()))
            raise DataError(
                f"Holdout '{column}={value}' matches no example of {source}; "
                f"'{column}' values are: {', '.join(known[:20])}."
            )
        held |= match
    if held.all():
        raise DataError(f"Holdout {', '.join(map(str, rules))} leaves no training examples in {source}.")
    return examples.subset(np.flatnonzero(~held)), examples.subset(np.flatnonzero(held))
