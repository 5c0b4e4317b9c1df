"""Segmentation overlays: class colours tinted over the image, side by side with the truth.

Example::

    from tlmulti.reports.overlays import class_colours, overlay_panel
    colours = class_colours(["background", "nucleus"])
    overlay_panel(image, predicted_ids, truth_ids, colours).save("case1.png")  # image | truth | prediction
"""

from __future__ import annotations

import numpy as np

COLOURS = [(0, 0, 0), (255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255),
           (0, 220, 220), (255, 128, 0), (128, 255, 128), (255, 128, 200), (128, 128, 0), (0, 128, 128)]


def class_colours(classes, palette: dict | None = None) -> list[tuple[int, int, int]]:
    """One RGB colour per class: the recipe palette's where it gives RGB, else a fixed table
    (then seeded random colours beyond it)."""
    from tlmulti.data.masks import normalize_palette

    given = dict(normalize_palette(palette)) if palette else {}
    out = []
    for i, name in enumerate(classes or []):
        colour = given.get(name)
        if colour is not None and len(colour) == 3:
            out.append(tuple(int(v) for v in colour))
        elif i < len(COLOURS):
            out.append(COLOURS[i])
        else:
            out.append(tuple(int(v) for v in np.random.default_rng(i).integers(0, 255, 3)))
    return out or list(COLOURS)


def _rgb(image: np.ndarray) -> np.ndarray:
    return image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)


def overlay(image: np.ndarray, ids: np.ndarray, colours, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with non-background classes tinted in their colours."""
    rgb = _rgb(image).astype(np.float32)
    table = np.asarray(colours, dtype=np.float32)
    ids = np.clip(ids, 0, len(table) - 1)
    fg = (ids > 0)[..., None]
    return np.where(fg, (1 - alpha) * rgb + alpha * table[ids], rgb).round().astype(np.uint8)


def overlay_panel(image, predicted, truth=None, colours=COLOURS):
    """A PIL image: the image, then the truth overlay (when given), then the prediction overlay."""
    from PIL import Image

    panels = [_rgb(image)]
    if truth is not None:
        panels.append(overlay(image, truth, colours))
    panels.append(overlay(image, predicted, colours))
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return Image.fromarray(np.concatenate(row, axis=1))
