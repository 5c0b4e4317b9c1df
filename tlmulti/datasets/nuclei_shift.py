"""The nuclei image as if from another microscope: a simulated, documented domain shift.

Medical-imaging models meet other scanners, stains and optics. This dataset applies one fixed
shift to the stardist nuclei image (see :mod:`tlmulti.datasets.nuclei`) so adaptation methods can
be compared on real pixels with known masks. The shift, in order, on the image scaled to 0..1 by
its 1st and 99.8th percentiles:

1. uneven illumination: multiply by a left-to-right ramp from 0.35 to 1.0;
2. gamma 0.5 (dim structures brighten more than bright ones);
3. defocus: Gaussian blur, sigma 1.5 pixels;
4. sensor noise: Gaussian, standard deviation 0.05, seed 0;
5. back to 16-bit (0..65535).

Percentile normalisation in the reader removes any global gain or offset, which is why the
shift is spatially varying and non-linear. Splits, over the same regions as ``nuclei``:
``target`` (the training region's images, no masks: unlabelled adaptation data) and ``test``
(the test region, images and masks: the labelled target test set).

Example::

    from tlmulti.datasets import prepare
    root = prepare("nuclei-shift")   # target/images/nuclei.tif, test/{images,masks}/nuclei.*
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHIFT = {"illumination_ramp": [0.35, 1.0], "gamma": 0.5, "blur_sigma": 1.5, "noise_std": 0.05, "seed": 0}


def shift_image(image: np.ndarray, ramp=(0.35, 1.0), gamma=0.5, blur_sigma=1.5, noise_std=0.05,
                seed: int = 0) -> np.ndarray:
    """Apply the documented shift to a 2-D intensity image; returns uint16."""
    from scipy.ndimage import gaussian_filter

    a = image.astype(np.float64)
    lo, hi = np.percentile(a, [1.0, 99.8])
    a = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
    a = a * np.linspace(ramp[0], ramp[1], a.shape[1])[None, :]
    a = a ** gamma
    a = gaussian_filter(a, blur_sigma)
    a = a + np.random.default_rng(seed).normal(0, noise_std, a.shape)
    return (np.clip(a, 0, 1) * 65535).astype(np.uint16)


def build(root: Path, source: str | None = None) -> None:
    import tifffile
    from PIL import Image

    from tlmulti.datasets.nuclei import load, region_boxes

    image, instances = load(Path(source) if source else None)
    shifted = shift_image(image, SHIFT["illumination_ramp"], SHIFT["gamma"], SHIFT["blur_sigma"],
                          SHIFT["noise_std"], SHIFT["seed"])
    mask = (instances > 0).astype(np.uint8)
    boxes = region_boxes(image.shape)
    for split, region, with_mask in (("target", "train", False), ("test", "test", True)):
        r0, r1, c0, c1 = boxes[region]
        (root / split / "images").mkdir(parents=True)
        tifffile.imwrite(str(root / split / "images" / "nuclei.tif"), shifted[r0:r1, c0:c1])
        if with_mask:
            (root / split / "masks").mkdir(parents=True)
            Image.fromarray(mask[r0:r1, c0:c1]).save(root / split / "masks" / "nuclei.png")
    (root / "dataset.json").write_text(json.dumps({"shift": SHIFT, "target": "train region, no masks",
                                                   "test": "test region with masks"}, indent=2))
