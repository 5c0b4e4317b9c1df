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


def draw_boxes(image: np.ndarray, boxes, labels, colours, scores=None, classes=None, width: int = 1):
    """RGB uint8 copy of ``image`` with ``xyxy`` pixel ``boxes`` outlined in their class colours
    (and, with ``classes``, each box's class name and score written above it)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(_rgb(np.asarray(image, np.uint8)))
    draw = ImageDraw.Draw(img)
    for k, (b, c) in enumerate(zip(np.asarray(boxes, float).reshape(-1, 4), np.asarray(labels).reshape(-1))):
        colour = tuple(colours[int(c) % len(colours)]) if int(c) >= 0 else (255, 255, 255)
        draw.rectangle([float(b[0]), float(b[1]), max(float(b[2]) - 1, float(b[0])), max(float(b[3]) - 1, float(b[1]))],
                       outline=colour, width=width)
        if classes is not None:
            text = classes[int(c)] + (f" {float(scores[k]):.2f}" if scores is not None else "")
            draw.text((float(b[0]) + 1, max(float(b[1]) - 11, 0)), text, fill=colour)
    return np.asarray(img)


def box_panel(image, predicted, truth, colours, gap: int = 4):
    """A PIL image: the true boxes (left) beside the predicted ones (right); ``predicted`` is
    ``(boxes, labels, scores)``, ``truth`` ``(boxes, labels)``."""
    from PIL import Image

    left = draw_boxes(image, truth[0], truth[1], colours)
    right = draw_boxes(image, predicted[0], predicted[1], colours, scores=predicted[2])
    sep = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return Image.fromarray(np.concatenate([left, sep, right], axis=1))
