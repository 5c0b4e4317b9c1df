"""Fashion-MNIST as if from another scanner: a simulated, documented domain shift for image
classification.

The images come from Fashion-MNIST's test file (Debian package ``dataset-fashion-mnist``), never
from the training images ``fashion-mnist`` uses, and go through one fixed shift, in order, on
pixels scaled to 0..1:

1. contrast inversion (``1 - x``: another modality's polarity);
2. blur: Gaussian, sigma 1.0 pixel;
3. sensor noise: Gaussian, standard deviation 0.08, seed 0;
4. back to 8-bit.

Splits: ``target`` (images 200..299 of each class in the test file, flat, no labels: the
unlabelled adaptation data) and ``test`` (images 300..399 of each class, in class folders: the
labelled target test set); disjoint from each other and from ``fashion-mnist``'s test split
(the first 200 of each class).

Example::

    from tlmulti.datasets import prepare
    root = prepare("fashion-mnist-scanner")   # target/*.png, test/<class>/*.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tlmulti.datasets.fashion_mnist import CLASSES, SOURCE, load_split

SHIFT = {"invert": True, "blur_sigma": 1.0, "noise_std": 0.08, "seed": 0}


def shift_images(x: np.ndarray, blur_sigma: float = 1.0, noise_std: float = 0.08, seed: int = 0) -> np.ndarray:
    """Apply the documented shift to uint8 images ``(N, H, W)``; returns uint8."""
    from scipy.ndimage import gaussian_filter

    a = 1.0 - x.astype(np.float64) / 255.0
    a = gaussian_filter(a, sigma=(0, blur_sigma, blur_sigma))
    a = a + np.random.default_rng(seed).normal(0, noise_std, a.shape)
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def build(root: Path, per_class: int = 100, offset: int = 200, source: Path = SOURCE) -> None:
    """``per_class`` unlabelled target and ``per_class`` labelled test images per class, taken
    after the first ``offset`` of each class of the test file."""
    from PIL import Image

    x, y = load_split("t10k", source)
    shifted = shift_images(x, SHIFT["blur_sigma"], SHIFT["noise_std"], SHIFT["seed"])
    (root / "target").mkdir(parents=True)
    for c, name in enumerate(CLASSES):
        idx = np.flatnonzero(y == c)[offset:offset + 2 * per_class]
        for i in idx[:per_class]:
            Image.fromarray(shifted[i], mode="L").save(root / "target" / f"{i:05d}.png")
        folder = root / "test" / name
        folder.mkdir(parents=True)
        for i in idx[per_class:]:
            Image.fromarray(shifted[i], mode="L").save(folder / f"{i:05d}.png")
    (root / "dataset.json").write_text(json.dumps(
        {"shift": SHIFT, "target": f"{per_class} per class, no labels", "test": f"{per_class} per class, labelled",
         "source_file": "t10k", "offset_per_class": offset}, indent=2))
