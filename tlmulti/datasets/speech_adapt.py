"""Flite recordings of the ten commands split in two: unlabelled adaptation data and a test set.

Speech users move a model to voices it never heard and usually have recordings of them without
labels. This dataset takes the flite half of ``speech-commands-synth`` (5 voices x 10 commands x 8
speed-jittered takes) and splits every (voice, command) cell in two, seeded: ``target.csv`` (use
as ``adaptation.target_data``; its labels are ignored by the trainer) and ``test.csv`` (the
labelled test set). No recording is in both.

Example::

    from tlmulti.datasets import prepare
    root = prepare("speech-flite-adapt")   # target.csv, test.csv with absolute audio paths
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def build(root: Path, seed: int = 0) -> None:
    from tlmulti.datasets import prepare

    source = prepare("speech-commands-synth")
    with open(source / "flite.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        row["path"] = str((source / row["path"]).resolve())
        cells[(row["speaker"], row["label"])].append(row)
    rng = np.random.default_rng(seed)
    target, test = [], []
    for key in sorted(cells):
        items = cells[key]
        order = rng.permutation(len(items))
        half = len(items) // 2
        target += [items[i] for i in order[:half]]
        test += [items[i] for i in order[half:]]
    for name, part in (("target.csv", target), ("test.csv", test)):
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(part[0]))
            writer.writeheader()
            writer.writerows(part)
