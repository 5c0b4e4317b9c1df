"""Nucleus detection on real microscope pixels: the stardist nuclei image as COCO tiles.

The source is that of :mod:`tlmulti.datasets.nuclei` (the 512x512 16-bit fluorescence image of
the 2018 Data Science Bowl and its instance mask, from the stardist 0.9.2 wheel), cut into the
same three disjoint regions (train: rows 0-320; val: rows 320-512, columns 0-192; test: rows
320-512, columns 192-512). Each region is cut into 96x96 tiles:

* train: a tile every 48 pixels (overlapping; the last row and column of tiles end at the
  region's edge): 6 x 10 = 60 tiles;
* val and test: side by side, no overlap: 2 x 2 = 4 and 2 x 3 = 6 tiles (the test region's last
  32 columns are not used).

Each split is ``<split>/images/nuclei_y<row>_x<col>.tif`` (the raw uint16 tile; ``row``, ``col``:
its top-left pixel in the full image) and ``<split>/annotations.json`` (COCO, one category
``nucleus``). A box is the tight bounding box of one instance label inside the tile, as COCO
``[x, y, width, height]`` on pixel edges (a nucleus filling columns 3..7 has ``x = 3``,
``width = 5``). A nucleus cut by the tile's edge keeps its clipped box when at least half of its
pixels are inside the tile; otherwise it is left out (``dataset.json`` counts those). ``build``
writes the counts per split (tiles, boxes, left-out nuclei, box side range) to ``dataset.json``
and ``README.txt``. From the stardist 0.9.2 wheel: train 60 tiles, 257 boxes (105 cut nuclei
left out); val 4 tiles, 24 boxes (12); test 6 tiles, 24 boxes (9); box side (square root of the
area) 5.3-32 pixels, median 23.

Example::

    tlmulti vision train --task object_detection --data dataset:nuclei-boxes/train \
        --val-data dataset:nuclei-boxes/val --test-data dataset:nuclei-boxes/test
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TILE = 96
TRAIN_STRIDE = 48
CATEGORY = {"id": 1, "name": "nucleus"}


def tile_corners(shape, split: str) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the tiles of a region of ``shape`` within its split."""
    from tlmulti.data.medical import tile_boxes

    if split == "train":
        return tile_boxes(shape, (TILE, TILE), (TRAIN_STRIDE, TRAIN_STRIDE))
    return [(y, x) for y in range(0, shape[0] - TILE + 1, TILE) for x in range(0, shape[1] - TILE + 1, TILE)]


def tile_annotations(instances: np.ndarray, y: int, x: int, tile: int = TILE,
                     areas: np.ndarray | None = None) -> tuple[list[dict], int]:
    """``([{label, bbox, area}], left_out)`` for the tile at ``(y, x)`` of a full instance mask:
    one entry per nucleus with at least half of its pixels inside (``bbox`` its clipped tight box,
    ``[x, y, w, h]`` in tile pixels; ``area`` its pixels inside), and how many cut nuclei were
    left out."""
    areas = np.bincount(instances.ravel()) if areas is None else areas
    part = instances[y:y + tile, x:x + tile]
    labels, inside = np.unique(part[part > 0], return_counts=True)
    kept, left_out = [], 0
    for label, n in zip(labels, inside):
        if 2 * n < areas[label]:
            left_out += 1
            continue
        ys, xs = np.nonzero(part == label)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        kept.append({"label": int(label), "area": int(n), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return kept, left_out


def build(root: Path, source: str | None = None, regions=None) -> dict:
    """Write ``root/<split>/images/*.tif``, ``root/<split>/annotations.json``, ``dataset.json`` and
    ``README.txt``; return the counts per split."""
    import tifffile

    from tlmulti.datasets.nuclei import VERSION, load, region_boxes

    image, instances = load(Path(source) if source else None)
    areas = np.bincount(instances.ravel())
    counts = {}
    for split, (r0, r1, c0, c1) in region_boxes(image.shape, regions).items():
        (root / split / "images").mkdir(parents=True)
        coco = {"info": {"description": f"stardist=={VERSION} nuclei, {split} region, {TILE}x{TILE} tiles"},
                "licenses": [], "images": [], "annotations": [], "categories": [dict(CATEGORY)]}
        left_out, sides = 0, []
        for y, x in tile_corners((r1 - r0, c1 - c0), split):
            top, left = r0 + y, c0 + x
            name = f"images/nuclei_y{top:03d}_x{left:03d}.tif"
            tifffile.imwrite(str(root / split / name), image[top:top + TILE, left:left + TILE])
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": name, "width": TILE, "height": TILE})
            kept, dropped = tile_annotations(instances, top, left, TILE, areas)
            left_out += dropped
            for entry in kept:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": CATEGORY["id"], "bbox": entry["bbox"],
                                            "area": entry["area"], "iscrowd": 0})
                sides.append(float(np.sqrt(entry["bbox"][2] * entry["bbox"][3])))
        (root / split / "annotations.json").write_text(json.dumps(coco))
        counts[split] = {"tiles": len(coco["images"]), "boxes": len(coco["annotations"]), "left_out_cut": left_out,
                         "box_side_min": round(min(sides), 1) if sides else None,
                         "box_side_max": round(max(sides), 1) if sides else None}
    (root / "dataset.json").write_text(json.dumps({
        "source": f"stardist=={VERSION} wheel: img2d.tif, mask2d.tif", "tile": TILE, "train_stride": TRAIN_STRIDE,
        "classes": [CATEGORY["name"]], "counts": counts}, indent=2))
    lines = [f"nuclei-boxes: {TILE}x{TILE} 16-bit tiles of the stardist {VERSION} nuclei image, COCO boxes "
             "(one class: nucleus).", "split  tiles  boxes  left out (cut)  box side (sqrt of area, px)"]
    lines += [f"{s:<6} {c['tiles']:>5}  {c['boxes']:>5}  {c['left_out_cut']:>14}  "
              f"{c['box_side_min']} - {c['box_side_max']}" for s, c in counts.items()]
    (root / "README.txt").write_text("\n".join(lines) + "\n")
    return counts
