"""Patch classification on real microscope pixels, with regions standing in for patients.

The stardist nuclei image (see :mod:`tlmulti.datasets.nuclei`: 512x512 16-bit fluorescence,
2018 Data Science Bowl, with an instance mask) is cut into a 4x4 grid of 128x128 regions. Each
region plays the part of one patient: its patches overlap each other (32x32, every 16 pixels:
49 per region) and never another region's. A patch is labelled ``nucleus`` when the 4x4 pixels at
its centre are mostly nucleus in the mask, else ``background`` (about a fifth are ``nucleus``).

Splits: ``train.csv`` (regions r00-r11: 588 patches) and ``test.csv`` (regions r12-r15: 196),
manifests ``path,label,region`` over 16-bit TIFF patches. Split training data by ``region``
(``--split-by region``); a random split puts overlapping patches of one region on both sides, the
leakage patient-level splits prevent.

Example::

    tlmulti vision train --data dataset:nuclei-patches/train --test-data dataset:nuclei-patches/test \\
        --split-by region
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

GRID, PATCH, STRIDE, CENTRE = 4, 32, 16, 4
TEST_REGIONS = 4  # the last four regions (the bottom row)


def patches(image: np.ndarray, mask: np.ndarray):
    """Yield ``(region, row, col, patch, label)`` over the grid of regions."""
    h, w = image.shape[:2]
    rh, rw = h // GRID, w // GRID
    for r in range(GRID):
        for c in range(GRID):
            region = f"r{r * GRID + c:02d}"
            for y in range(r * rh, (r + 1) * rh - PATCH + 1, STRIDE):
                for x in range(c * rw, (c + 1) * rw - PATCH + 1, STRIDE):
                    cy, cx = y + PATCH // 2 - CENTRE // 2, x + PATCH // 2 - CENTRE // 2
                    centre = mask[cy:cy + CENTRE, cx:cx + CENTRE]
                    label = "nucleus" if centre.mean() > 0.5 else "background"
                    yield region, y, x, image[y:y + PATCH, x:x + PATCH], label


def build(root: Path, source: str | None = None) -> None:
    import tifffile

    from tlmulti.datasets.nuclei import VERSION, load

    image, instances = load(Path(source) if source else None)
    mask = (instances > 0).astype(np.uint8)
    (root / "patches").mkdir(parents=True)
    test_regions = {f"r{i:02d}" for i in range(GRID * GRID - TEST_REGIONS, GRID * GRID)}
    rows = {"train": [], "test": []}
    for region, y, x, patch, label in patches(image, mask):
        name = f"patches/{region}_y{y:03d}_x{x:03d}.tif"
        tifffile.imwrite(str(root / name), patch)
        rows["test" if region in test_regions else "train"].append({"path": name, "label": label, "region": region})
    for split, items in rows.items():
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "region"])
            writer.writeheader()
            writer.writerows(items)
    counts = {s: {k: sum(r["label"] == k for r in v) for k in ("background", "nucleus")} for s, v in rows.items()}
    (root / "dataset.json").write_text(json.dumps({
        "source": f"stardist=={VERSION} wheel: img2d.tif, mask2d.tif", "grid": GRID, "patch": PATCH,
        "stride": STRIDE, "label": f"nucleus when the central {CENTRE}x{CENTRE} pixels are mostly nucleus",
        "counts": counts}, indent=2))
