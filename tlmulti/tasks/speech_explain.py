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



def explain_clips(task, model, items, out_dir) -> list[dict]:
    """One ``{"input", "label", "saliency"}`` per audio file of ``items``, in ``predict``'s order."""
    from PIL import Image

    from tlmulti.evaluation.mel_saliency import MelSaliency, spectrogram_overlay
    from tlmulti.tasks.explain_output import explain_folder, stem_of, unique, writing

    saliency = MelSaliency(model, task.spec.name)  # refuses a model without a splittable front end first
    out = explain_folder(out_dir)
    x, names = task.read_inputs(items)
    maps, mels, classes = saliency(np.asarray(x, np.float32))
    rows, taken = [], set()
    for name, fmap, mel, c in zip(names, maps, mels, classes):
        stem = unique(stem_of(Path(name)), taken)
        npy, png = out / f"{stem}.npy", out / f"{stem}.png"
        with writing(npy):
            np.save(npy, fmap.astype(np.float32))
            Image.fromarray(spectrogram_overlay(mel, fmap)).save(png)
        rows.append({"input": name, "saliency": str(npy),
                     "label": task.classes[int(c)] if int(c) < len(task.classes) else str(int(c))})
    return rows
