"""Saliency maps of speech classification runs: the files ``audio predict --explain DIR`` writes
(:mod:`tlmulti.evaluation.mel_saliency`).

Every input file is read as ``predict`` reads it (the run's sample rate and clip length), and
for each ``DIR/<stem>.npy`` holds the map (float32, ``(frames, mel bands)`` of the model's own
front end, 0..1) and ``DIR/<stem>.png`` the log-mel spectrogram with the map over it (time on
x, low mel bands at the bottom); two inputs with one stem get ``-2``, ``-3``... Prediction rows
gain ``saliency``: the ``.npy`` path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlmulti.errors import TlmultiError


def explain_clips(task, model, items, out_dir) -> list[dict]:
    """One ``{"input", "label", "saliency"}`` per audio file of ``items``, in ``predict``'s order."""
    from PIL import Image

    from tlmulti.evaluation.mel_saliency import MelSaliency, spectrogram_overlay
    from tlmulti.tasks.image_saliency import _stem, _unique

    saliency = MelSaliency(model, task.spec.name)  # refuses a model without a splittable front end first
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TlmultiError(f"Cannot create the --explain folder '{out}' ({exc.strerror or exc}); give a folder "
                           "you can write to.") from None
    x, names = task.read_inputs(items)
    maps, mels, classes = saliency(np.asarray(x, np.float32))
    rows, taken = [], set()
    for name, fmap, mel, c in zip(names, maps, mels, classes):
        stem = _unique(_stem(Path(name)), taken)
        npy, png = out / f"{stem}.npy", out / f"{stem}.png"
        try:
            np.save(npy, fmap.astype(np.float32))
            Image.fromarray(spectrogram_overlay(mel, fmap)).save(png)
        except OSError as exc:
            raise TlmultiError(f"Cannot write '{npy}' ({exc.strerror or exc}); free some space or give "
                               "another --explain folder.") from None
        rows.append({"input": name, "saliency": str(npy),
                     "label": task.classes[int(c)] if int(c) < len(task.classes) else str(int(c))})
    return rows
