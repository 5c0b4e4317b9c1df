"""Saliency maps of image classification runs: the files ``predict --explain DIR`` writes and
the heatmaps report.html shows (Grad-CAM, :mod:`tlmulti.evaluation.saliency`).

Every input is read twice over from the same decoded pixels: at the model's input size, as
``predict`` feeds it (so the map is of what the model sees), and at its own size, which the map
is resized to. Per 2-D image (a volume gives one per slice) ``DIR/<stem>.npy`` holds the map
(float32, the image's height x width as read, 0..1) and ``DIR/<stem>.png`` the image with the
map over it; two inputs with one stem get ``-2``, ``-3``... instead of overwriting each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tlmulti.tasks.explain_output import explain_folder, stem_of, unique, writing

CORRECT_PER_CLASS = 2  # correctly classified examples with a heatmap in report.html, per class
MAX_CORRECT = 24


def explain_files(task, model, items, out_dir) -> list[dict]:
    """Write the heatmap (``.npy``) and overlay (``.png``) of every image in ``items`` to
    ``out_dir``; one ``{"input", "heatmap", "label"}`` per 2-D image, in ``predict``'s order."""
    from PIL import Image

    from tlmulti.data.images import convert, image_files, load_slices
    from tlmulti.evaluation.saliency import BATCH, GradCam, overlay, upsample

    out = explain_folder(out_dir)
    cam = GradCam(model)
    size, channels, intensity = task.image_size(), task.channels(), task.intensity()
    rows, taken, pending = [], set(), []  # pending: (input name, stem, image as read), up to a batch

    def flush():
        maps, classes, _ = cam(np.stack([convert(image, size, channels) for _, _, image in pending]))
        for (name, stem, image), fmap, c in zip(pending, maps, classes):
            heat = upsample(fmap, image.shape[:2])
            npy, png = out / f"{stem}.npy", out / f"{stem}.png"
            with writing(npy):
                np.save(npy, heat)
                Image.fromarray(overlay(image, heat)).save(png)
            rows.append({"input": name, "heatmap": str(npy),
                         "label": task.classes[int(c)] if int(c) < len(task.classes) else str(int(c))})
        pending.clear()

    for path in (f for item in items for f in image_files(item)):
        images = load_slices(path, None, channels, **intensity)  # as read: the map's resolution
        for k, image in enumerate(images):
            several = len(images) > 1
            stem = unique(stem_of(Path(path)) + (f"_slice{k}" if several else ""), taken)
            pending.append((f"{path}#slice{k}" if several else str(path), stem, image))
            if len(pending) >= BATCH:
                flush()
    if pending:
        flush()
    return rows


def with_saliency(task, model, examples, shown: list[dict], probs, correct) -> list[dict]:
    """``shown`` (the report's most-wrong examples, each with its model-size ``image``) with a
    Grad-CAM overlay (``heatmap``) added, followed by up to :data:`CORRECT_PER_CLASS` correctly
    classified examples per class (``correct`` true), marked ``"correct": True``. A model
    without a feature map to explain, or any failure here, leaves ``shown`` as it is: the
    report is drawn without heatmaps."""
    from tlmulti.evaluation.saliency import GradCam, overlay, upsample

    try:
        probs, correct = np.asarray(probs), np.asarray(correct, bool)
        top = probs.argmax(axis=1)
        picked = []
        for c in range(len(examples.classes)):
            picked += [int(i) for i in np.flatnonzero(correct & (top == c))[:CORRECT_PER_CLASS]]
        picked = picked[:MAX_CORRECT]
        extra = []
        y = np.asarray(examples.y)
        for i in picked:
            path = (examples.meta.get("path") or [None] * len(examples))[i]
            label = "|".join(c for c, v in zip(examples.classes, y[i]) if v > 0) if y.ndim == 2 else examples.classes[top[i]]
            extra.append({"name": str(path).rsplit("/", 1)[-1] if path else f"#{i}", "true": label,
                          "predicted": label, "probability": float(probs[i, top[i]]),
                          "correct": True, **task.example_content(examples, i)})
        cards = [e for e in shown + extra if e.get("kind") == "image" and e.get("image") is not None]
        if not cards:
            return shown
        images = np.stack([np.asarray(e["image"]) for e in cards])
        maps, _, _ = GradCam(model)(images)
        for e, fmap in zip(cards, maps):
            e["heatmap"] = overlay(e["image"], upsample(fmap, np.asarray(e["image"]).shape[:2]))
        return shown + extra
    except Exception as exc:  # noqa: BLE001 - a heatmap must never cost a finished run its report
        print(f"note: report.html has no saliency maps ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
        return shown
