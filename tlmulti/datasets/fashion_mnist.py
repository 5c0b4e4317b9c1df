"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, written as class folders of PNGs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from tlmulti.errors import DataError

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def load_split(split: str, source: Path = SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int (N,)) of ``train`` or ``t10k``."""
    images = source / f"{split}-images-idx3-ubyte.gz"
    labels = source / f"{split}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise DataError(
            f"Fashion-MNIST files not found in '{source}'; install them with "
            "'apt-get install dataset-fashion-mnist' (make demo does this)."
        )
    x = np.frombuffer(gzip.open(images).read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    y = np.frombuffer(gzip.open(labels).read(), dtype=np.uint8, offset=8).astype(int)
    return x, y


def build(root: Path, train_per_class: int = 300, test_per_class: int = 200, source: Path = SOURCE) -> None:
    """Write the first ``*_per_class`` images of each class as ``root/{train,test}/<class>/*.png``."""
    from PIL import Image

    from tlmulti.progress import Every, progress_bar

    for split, raw, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        x, y = load_split(raw, source)
        chosen = [(name, np.flatnonzero(y == c)[:per_class]) for c, name in enumerate(CLASSES)]
        n = sum(len(idx) for _, idx in chosen)
        done = Every(progress_bar(n, f"Writing {split} images", unit="image", at_least=2000), n, 500)
        for name, idx in chosen:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in idx:
                Image.fromarray(x[i], mode="L").save(folder / f"{i:05d}.png")
                done.add()
