"""Segmentation phantoms from scikit-image's bundled Shepp-Logan head phantom, each image a new
random deformation with its own intensities and noise: classes defined by intensity, as tissue
classes in MR are.

* ``phantom-tissue`` (8-bit PNG, 233 x 197, three classes): ``background`` (air and the bright
  skull ring), ``grey`` (the phantom's large 0.1-0.2 regions) and ``white`` (its 0.3-0.4
  ellipses). Per image: grey intensity U(0.35, 0.5), white brighter by U(0.10, 0.22) (as in T1
  MR), skull U(0.8, 1.0), a smooth multiplicative bias field of +-15%, a 0.7 px blur (partial
  volume) and Gaussian noise of standard deviation 0.03.
* ``phantom-lesions`` (16-bit PNG, 214 x 214 = 45,796 pixels, two classes): the same heads with
  one small lesion each, an ellipse of 37 to 101 pixels (0.08% to 0.22% of the image) inside the
  brain, brighter than its surroundings by U(0.15, 0.3); ``background`` is everything else.

Every image is the phantom under a random affine map (scale 0.8-1.05, rotation +-15 degrees,
shift +-8%) and a smooth elastic displacement (up to about 6 px); masks follow the same map
(nearest neighbour). Splits ``train`` / ``val`` / ``test`` are ``images/`` + ``masks/`` folders
with seeds 0, 1 and 2, so they never share an image.

Example::

    from tlmulti.datasets import prepare
    root = prepare("phantom-tissue")   # {train,val,test}/{images,masks}/p000.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = {"train": 0, "val": 1, "test": 2}


def _warp(rng, shape):
    """Sampling coordinates ``(2, H, W)`` into the 400 x 400 phantom for an output of ``shape``."""
    from scipy.ndimage import gaussian_filter

    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    scale = rng.uniform(0.8, 1.05) * 400 / max(h, w)
    angle = np.deg2rad(rng.uniform(-15, 15))
    cy, cx = (h - 1) / 2 + rng.uniform(-0.08, 0.08) * h, (w - 1) / 2 + rng.uniform(-0.08, 0.08) * w
    dy, dx = yy - cy, xx - cx
    ys = 199.5 + scale * (np.cos(angle) * dy - np.sin(angle) * dx)
    xs = 199.5 + scale * (np.sin(angle) * dy + np.cos(angle) * dx)
    for grid in (ys, xs):  # smooth elastic displacement, in phantom pixels
        field = gaussian_filter(rng.normal(size=shape), 12.0)
        grid += field / (np.abs(field).max() + 1e-9) * 6.0 * scale
    return np.stack([ys, xs])


def _head(rng, shape, noise: float = 0.03, blur: float = 0.7):
    """(intensity image 0..1, label map of the phantom's levels, brain mask) of one random head."""
    from scipy.ndimage import gaussian_filter, map_coordinates
    from skimage.data import shepp_logan_phantom

    phantom = np.round(shepp_logan_phantom(), 1)
    coords = _warp(rng, shape)
    levels = map_coordinates(phantom, coords, order=0, mode="constant", cval=0.0)
    grey = rng.uniform(0.35, 0.5)
    values = {0.0: 0.02, 0.1: grey, 0.2: grey, 0.3: grey + rng.uniform(0.10, 0.22), 1.0: rng.uniform(0.8, 1.0)}
    values[0.4] = values[0.3]
    image = np.zeros(shape)
    for level, value in values.items():
        image[np.isclose(levels, level)] = value
    bias = gaussian_filter(rng.normal(size=shape), 30.0)
    image *= 1.0 + 0.15 * bias / (np.abs(bias).max() + 1e-9)
    image = gaussian_filter(image, blur) + rng.normal(0, noise, shape)
    brain = np.isin(np.round(levels, 1), (0.1, 0.2, 0.3, 0.4))
    return np.clip(image, 0, 1), levels, brain


def _lesion(rng, brain):
    """A filled ellipse of 37-101 pixels centred inside ``brain`` (a boolean map)."""
    ys, xs = np.nonzero(brain)
    h, w = brain.shape
    yy, xx = np.mgrid[:h, :w]
    for _ in range(100):
        i = rng.integers(len(ys))
        a, b = rng.uniform(3.5, 6.5), rng.uniform(3.5, 6.5)
        theta = rng.uniform(0, np.pi)
        u = (yy - ys[i]) * np.cos(theta) + (xx - xs[i]) * np.sin(theta)
        v = -(yy - ys[i]) * np.sin(theta) + (xx - xs[i]) * np.cos(theta)
        blob = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if 37 <= blob.sum() <= 101 and brain[blob].all():
            return blob
    raise RuntimeError("no lesion fits this phantom")


def build(root: Path, kind: str = "tissue", counts=(33, 8, 16), size=None, noise: float = 0.03,
          blur: float = 0.7) -> None:
    """Write the three splits under ``root``; ``size`` (H, W), ``noise`` (standard deviation) and
    ``blur`` (pixels) replace the defaults above."""
    from PIL import Image

    for (split, seed), n in zip(SPLITS.items(), counts):
        rng = np.random.default_rng(seed)
        images, masks = Path(root) / split / "images", Path(root) / split / "masks"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for i in range(n):
            if kind == "tissue":
                image, levels, _ = _head(rng, tuple(size or (233, 197)), noise, blur)
                mask = np.zeros(levels.shape, np.uint8)
                mask[np.isin(levels, (0.1, 0.2))] = 1
                mask[np.isin(levels, (0.3, 0.4))] = 2
                Image.fromarray(np.round(image * 255).astype(np.uint8)).save(images / f"p{i:03d}.png")
            else:
                image, _, brain = _head(rng, tuple(size or (214, 214)), noise, blur)
                blob = _lesion(rng, brain)
                image[blob] = np.clip(image[blob] + rng.uniform(0.15, 0.3), 0, 1)
                mask = blob.astype(np.uint8)
                Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(images / f"p{i:03d}.png")
            Image.fromarray(mask).save(masks / f"p{i:03d}.png")
    classes = ["background", "grey", "white"] if kind == "tissue" else ["background", "lesion"]
    (Path(root) / "dataset.json").write_text(json.dumps({
        "source": "scikit-image's bundled Shepp-Logan phantom (skimage.data.shepp_logan_phantom)", "kind": kind,
        "classes": classes, "counts": dict(zip(SPLITS, counts)), "seeds": SPLITS}, indent=2))
