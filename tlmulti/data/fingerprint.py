"""A segmentation dataset's fingerprint, and the configuration it implies.

As nnU-Net plans a network from its dataset fingerprint, a segmentation run without explicit
keys measures its training data first and derives from it what a fixed recipe would guess:

* **fingerprint** (:func:`fingerprint`, on up to ``MAX_FILES`` training files, ``MAX_SLICES``
  slices each): image sizes and slices, file kinds, whether values are 8-bit, raw intensity
  percentiles over all pixels and over foreground pixels, the pixel share of each class, and
  per foreground class its objects (8-connected components): count, median and smallest area in
  pixels and as a share of the image.
* **intensity normalisation** (:func:`plan_normalization`, for ``data.normalize: auto``): data
  in Hounsfield units (raw values below ``HU_AIR``, as CT air is at -1000) gets one window for
  the whole dataset, from the 0.5th to the 99.5th percentile of the foreground's raw values
  (nnU-Net's CT scheme), written into the saved recipe as ``data.normalize: window`` and
  ``data.window``; other wide data (16-bit microscopy, MR) is stretched per file between its
  own percentiles (as nnU-Net z-scores MR per image); 8-bit data keeps its fixed range.
* **foreground sampling** (:func:`foreground_repeats`, for ``data.foreground_sampling``): when
  fewer than ``TARGET_SHARE`` of the training tiles contain the rarest foreground class, its
  tiles are repeated so that at least that share of every epoch contains it (nnU-Net draws a
  third of its patches around foreground; MONAI's positive / negative crop sampling does the
  same).

The tile size is derived from the same sample (:func:`tlmulti.data.slides.derived_tile`).
Everything measured and chosen is kept in the run's ``data_summary.json`` (``inputs.fingerprint``)
and shown in ``report.html``.
"""

from __future__ import annotations

import math

import numpy as np

MAX_FILES = 50
MAX_SLICES = 8
PIXELS_PER_FILE = 20_000  # raw values sampled from each file for the intensity percentiles
HU_AIR = -500.0  # raw values below this are read as Hounsfield units (CT air is -1000)
TARGET_SHARE = 1 / 3  # nnU-Net's oversample_foreground_percent


def _slices(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_SLICES)).round().astype(int))


def fingerprint(pairs, data, n_files: int, seed: int = 0) -> dict:
    """What the training data looks like, measured on ``pairs`` (``(image, mask)`` paths, a
    sample of the ``n_files`` training files); ``data`` is the recipe's data section (how masks
    and volumes are read)."""
    from scipy import ndimage

    from tlmulti.data.masks import read_mask
    from tlmulti.data.medical import read_stack, suffix_of

    rng = np.random.default_rng(seed)
    shapes, kinds, bits8, values, fg_values = [], {}, [], [], []
    counts = np.zeros(0, np.int64)
    objects: dict[int, list[tuple[int, int]]] = {}
    for image_path, mask_path in pairs:
        stack, info = read_stack(image_path, axis=data.slice_axis)
        masks = read_mask(mask_path, axis=data.slice_axis, palette=data.palette or None,
                          binarize=data.binarize_masks)
        shapes.append(tuple(int(v) for v in stack.shape[:3]))
        kind = suffix_of(image_path).lstrip(".")
        kinds[kind] = kinds.get(kind, 0) + 1
        bits8.append(bool(stack.dtype == np.uint8 or info.bits8))
        picked = _slices(len(stack))
        for k in picked:
            image = np.asarray(stack[k], np.float32).mean(-1) if stack.shape[-1] > 1 else np.asarray(stack[k, ..., 0], np.float32)
            mask = np.asarray(masks[min(k, len(masks) - 1)])
            flat, labels = image.ravel(), mask.ravel()
            pick = rng.choice(flat.size, min(flat.size, PIXELS_PER_FILE // len(picked) + 1), replace=False)
            values.append(flat[pick])
            fg = np.flatnonzero(labels > 0)
            if fg.size:
                fg_values.append(flat[rng.choice(fg, min(fg.size, 2000), replace=False)])
            bins = np.bincount(labels.astype(np.int64), minlength=len(counts))
            counts = np.pad(counts, (0, max(0, len(bins) - len(counts)))) + bins
            for c in np.unique(labels[labels > 0]):
                comps, _ = ndimage.label(mask == c, structure=np.ones((3, 3)))
                areas = np.bincount(comps.ravel())[1:]
                objects.setdefault(int(c), []).extend((int(a), mask.size) for a in areas)
    every = np.concatenate(values) if values else np.zeros(1, np.float32)
    fg = np.concatenate(fg_values) if fg_values else every
    pct = (lambda a, q: [round(float(v), 3) for v in np.percentile(a, q)])
    heights, widths = [s[1] for s in shapes], [s[2] for s in shapes]
    out = {
        "files": int(n_files), "measured_files": len(shapes), "kinds": kinds, "shapes": shapes,
        "size_median": [int(np.median(heights)), int(np.median(widths))] if shapes else [],
        "size_min": [int(min(heights)), int(min(widths))] if shapes else [],
        "slices_per_file": int(np.median([s[0] for s in shapes])) if shapes else 0,
        "bits8": bool(all(bits8)) if bits8 else False,
        "intensity": {"percentiles_0.5_50_99.5": pct(every, [0.5, 50, 99.5]),
                      "foreground_percentiles_0.5_50_99.5": pct(fg, [0.5, 50, 99.5]),
                      "min": round(float(every.min()), 3), "max": round(float(every.max()), 3)},
        "class_pixel_share": {int(c): round(float(n / max(counts.sum(), 1)), 6) for c, n in enumerate(counts)},
        "objects": {},
    }
    for c, found in sorted(objects.items()):
        areas = np.array([a for a, _ in found])
        shares = np.array([a / size for a, size in found])
        out["objects"][c] = {"count": int(len(areas)), "median_pixels": float(np.median(areas)),
                             "min_pixels": int(areas.min()), "median_share": round(float(np.median(shares)), 6)}
    return out


def plan_normalization(fp: dict, normalize: str, window) -> tuple[str, list[float], str]:
    """``(normalize, window, reason)`` for ``data.normalize`` / ``data.window`` as the recipe
    gives them: only ``auto`` is resolved, the rest is kept as written."""
    if normalize != "auto":
        return normalize, list(window or []), "as the recipe sets it"
    if fp.get("bits8"):
        return "auto", [], "8-bit data: the fixed 0-255 range, values unchanged"
    if fp["intensity"]["min"] < HU_AIR:
        lo, _, hi = fp["intensity"]["foreground_percentiles_0.5_50_99.5"]
        hi = max(hi, lo + 1.0)
        return ("window", [round((lo + hi) / 2, 2), round(hi - lo, 2)],
                f"values below {HU_AIR:g} read as Hounsfield units: one window for the dataset, the 0.5th-99.5th "
                "percentile of the foreground's values")
    return "auto", [], "wider than 8 bits: each file stretched between its own 0.5th and 99.5th percentiles"


def rarest_class(masks, n_classes: int) -> int | None:
    """The foreground class id with the fewest pixels in ``masks`` (None without foreground)."""
    counts = np.zeros(n_classes, np.int64)
    for m in masks:
        counts += np.bincount(np.asarray(m, np.int64).ravel(), minlength=n_classes)[:n_classes]
    present = [c for c in range(1, n_classes) if counts[c] > 0]
    return min(present, key=lambda c: counts[c]) if present else None


def foreground_repeats(masks, n_classes: int, share) -> tuple[np.ndarray, dict]:
    """Example indices for training, in which tiles holding the rarest foreground class are
    repeated so that at least ``share`` of them hold it (``"auto"``: :data:`TARGET_SHARE`, only
    when the data has fewer; ``0``: off), and a record of the choice."""
    masks = [np.asarray(m) for m in masks]
    n = len(masks)
    index = np.arange(n)
    c = rarest_class(masks, n_classes)
    if c is None:
        return index, {"repeats": 1, "reason": "no foreground in the training masks"}
    positive = np.array([bool((m == c).any()) for m in masks])
    p = int(positive.sum())
    target = TARGET_SHARE if share == "auto" else float(share)
    record = {"class": int(c), "tiles": n, "positive_tiles": p, "share_before": round(p / n, 4), "target": round(target, 4)}
    if target <= 0 or p / n >= target or p == n:
        return index, {**record, "repeats": 1, "share_after": round(p / n, 4),
                       "reason": "off" if target <= 0 else "the data already has the target share"}
    if target >= 1:
        return np.flatnonzero(positive), {**record, "repeats": 1, "share_after": 1.0, "reason": "positive tiles only"}
    repeats = math.ceil(target * (n - p) / ((1 - target) * p))
    extra = np.repeat(np.flatnonzero(positive), repeats - 1)
    total = n + len(extra)
    return np.concatenate([index, extra]), {**record, "repeats": int(repeats),
                                            "share_after": round(p * repeats / total, 4),
                                            "reason": "tiles with the rarest class repeated"}


_MEMO: dict = {}


def plan(data, contract, min_tiles: int, seed: int = 0) -> dict:
    """The fingerprint of the training folder ``data.train`` and what it sets where the recipe
    leaves a key to the data: ``{"fingerprint", "tile", "normalize", "window", "reasons"}``
    (``tile`` None: images resized, not tiled). Measured once per folder and process."""
    from tlmulti.data.manifest import resolve_source
    from tlmulti.data.masks import pair_files
    from tlmulti.data.slides import derived_tile

    pairs = pair_files(resolve_source(data.train), data.images_dir, data.masks_dir, data.mask_suffix)
    step = max(1, len(pairs) // MAX_FILES)
    sample = pairs[::step][:MAX_FILES]
    key = (tuple(str(p) for pair in sample for p in pair), data.slice_axis, data.binarize_masks,
           repr(data.palette), len(pairs))
    if key not in _MEMO:
        _MEMO[key] = fingerprint(sample, data, len(pairs), seed)
    fp = _MEMO[key]
    reasons = {}
    tile = None
    if not data.tile and not data.image_size:
        tile = derived_tile([tuple(v) for v in fp["shapes"]], contract, len(pairs), min_tiles)
        reasons["tile"] = (f"{tile[0]} x {tile[1]} tiles at half-tile stride: the largest from the network's "
                           f"{contract[0]} px down to 128 px giving at least {min_tiles} training tiles") if tile else (
            f"images no larger than the network's {contract[0]} x {contract[1]}: resized, not tiled")
    else:
        reasons["tile"] = "as the recipe sets it"
    normalize, window, reasons["normalize"] = plan_normalization(fp, data.normalize, data.window)
    return {"fingerprint": {k: v for k, v in fp.items() if k != "shapes"}, "tile": tile, "normalize": normalize,
            "window": window, "reasons": reasons}
