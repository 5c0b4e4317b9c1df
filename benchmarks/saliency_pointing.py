"""Do the Grad-CAM heatmaps of ``vision predict --explain`` point at the object? The pointing game.

Composes images on a textured noise background with the object at a known, random spot, of
random size and brightness, trains the default image recipe (EfficientNet-Lite0: a head on
frozen features, then the top three groups) on them, small, and runs ``--explain`` on held-out
images. Two problems (``--problem``): ``presence``, a bright disc (class ``disc``, the positives)
or nothing (``empty``); ``shape``, a disc (``disc``) or a square (``square``): every image holds
an object, all are positives. Prints the pointing game: the share of correctly classified
positives whose heatmap maximum falls inside the object (and within 15 px of it, the tolerance
of Zhang et al., 2016), with the count, the share of the image the objects cover (what a random
point scores) and the seconds. The last feature map of Lite0 is 7 x 7 at 224 px: the maximum of
the upsampled map sits near the centre of a 32 px cell, which limits the strict score for
objects 32 to 63 px across.

    python benchmarks/saliency_pointing.py [--problem presence|shape] [--train 80] [--test 40]
                                           [--size 224] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

PROBLEMS = {"presence": ("disc", "empty"), "shape": ("disc", "square")}


def compose(rng, kind: str, size: int):
    """``(image, mask)``: grey textured noise with one disc or square at a random place (nothing,
    an empty mask, for ``empty``)."""
    from PIL import Image, ImageFilter

    noise = Image.fromarray(rng.integers(0, 256, (size // 4, size // 4), dtype=np.uint8))
    background = np.asarray(noise.resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2)), np.float32)
    image = 70 + 0.45 * background + rng.normal(0, 12, (size, size))
    r = rng.uniform(0.07, 0.14) * size
    cy, cx = rng.uniform(r + 2, size - r - 2, 2)
    yy, xx = np.mgrid[:size, :size]
    if kind == "empty":
        mask = np.zeros((size, size), bool)
    elif kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    else:
        half = r * 0.886  # the square of the disc's area
        mask = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    image[mask] += rng.uniform(60, 110)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_set(root: Path, classes, n_per_class: int, size: int, seed: int) -> dict:
    from PIL import Image

    rng = np.random.default_rng(seed)
    masks = {}
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            image, mask = compose(rng, kind, size)
            path = root / kind / f"{kind}_{i}.png"
            Image.fromarray(image).save(path)
            masks[str(path)] = mask
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=list(PROBLEMS), default="presence")
    parser.add_argument("--train", type=int, default=80, help="Training images per class.")
    parser.add_argument("--test", type=int, default=40, help="Test images per class.")
    parser.add_argument("--size", type=int, default=224, help="Image side in pixels (also the network input).")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import tlmulti
    from tlmulti.evaluation.saliency import pointing_hit
    from tlmulti.runs import load_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        classes = PROBLEMS[args.problem]
        write_set(tmp / "train", classes, args.train, args.size, seed=0)
        masks = write_set(tmp / "test", classes, args.test, args.size, seed=1)
        recipe = tlmulti.load_recipe(task="image_classification", overrides=[
            f"data.train={tmp / 'train'}", f"data.test={tmp / 'test'}", f"data.image_size=[{args.size}, {args.size}]",
            "phases.0.epochs=15", "phases.1.epochs=4", "callbacks.verbose=0",
            "output.plots=false", *args.overrides])
        t0 = time.perf_counter()
        run = tlmulti.train(recipe, out=tmp / "run")
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, task, model = load_run(tmp / "run")
        rows = task.explain(model, [str(tmp / "test")], tmp / "maps")
        t_explain = time.perf_counter() - t0
        correct = hits = near = 0
        for row in rows:
            truth = Path(row["input"]).parent.name
            if row["label"] != truth or not masks[row["input"]].any():  # wrong, or no object to point at
                continue
            correct += 1
            heat, mask = np.load(row["heatmap"]), masks[row["input"]]
            hits += pointing_hit(heat, mask)
            near += pointing_hit(heat, mask, tolerance=15)
        cover = float(np.mean([m.mean() for m in masks.values() if m.any()]))
    print(f"{args.problem} ({' vs '.join(classes)}): test accuracy {run.metrics['test']['accuracy']:.4f} on "
          f"{len(rows)} images ({args.size} px), {2 * args.train} training images")
    print(f"pointing game: {hits} of {correct} correctly classified positives have their heatmap maximum inside "
          f"the object: {hits / max(correct, 1):.3f} (a random point: {cover:.3f}, the objects' share of the image)")
    print(f"within 15 px of the object (the usual tolerance): {near} of {correct}: {near / max(correct, 1):.3f}")
    print(f"seconds: training {t_train:.1f}, --explain on {len(rows)} images {t_explain:.1f}")


if __name__ == "__main__":
    main()
