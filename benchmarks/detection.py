"""Pretrained detector against random initialisation and a classical detector, on nuclei boxes.

Runs ``recipes/vision/nuclei_detection.yaml`` (RetinaNet head over EfficientNet-Lite0, the head
trained on cached features, then the top two encoder groups fine-tuned) in one process and scores
every arm on the held-out ``nuclei-boxes`` test tiles, boxes in each tile's own pixels:

* ``pretrained``: the recipe as is (the encoder's offline ImageNet weights);
* ``random``: the same recipe with ``backbone.weights=random`` (same phases, same frozen groups);
* ``classical``: scikit-image with no training on boxes. Each tile is read as the recipe reads it
  (1st-99.8th percentile of the tile to 0..1), then one of two detectors:

  - ``log``: Laplacian-of-Gaussian blobs (``skimage.feature.blob_log``); a blob at ``(y, x)`` of
    scale ``sigma`` gives the square box of half-side ``box_scale * sqrt(2) * sigma`` around it,
    scored by its scale-normalised LoG response ``-sigma^2 * LoG``;
  - ``otsu``: Otsu threshold of the (optionally Gaussian-smoothed) tile, touching nuclei split by
    a watershed on the distance transform (``min_distance`` between seeds; 0: plain connected
    components), regions under ``min_area`` pixels dropped; a region's tight bounding box,
    scored by its mean intensity.

  The detector and its few parameters are picked on the train + val tiles only (a small grid,
  the best mAP@0.5, then mAP@[.5:.95]); its score threshold is the one with the best F1 there.
  Deterministic: one row whatever ``--seeds``.

It prints COCO mAP@0.5 and mAP@[.5:.95] (pycocotools), precision / recall / F1 at the score
threshold (the trained arms take it from the validation data: ``run.metrics["test"]``) and wall
time of each, then mAP@0.5 of ``pretrained`` over ``random`` and over ``classical``, all measured
in this process, and writes them as JSON with ``--json``.

    python benchmarks/detection.py                                  # all three arms, ~5 min on 2 CPU cores
    python benchmarks/detection.py --configs classical              # ~30 s
    python benchmarks/detection.py --configs pretrained random --seeds 0 1 --json results.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "vision", "nuclei_detection.yaml")
CONFIGS = {
    "pretrained": [],
    "random": ["backbone.weights=random"],
    "classical": None,
}
GRIDS = {
    "log": {"min_sigma": [2.0, 3.0, 4.0], "max_sigma": [8.0, 12.0], "box_scale": [1.0, 1.2, 1.4]},
    "otsu": {"min_area": [10, 20, 40], "min_distance": [0, 5, 7, 9], "smooth": [0.0, 1.0]},
}
LOG_THRESHOLD = 0.01  # blob_log's floor on the scale-normalised response; the ranking does the rest


# -- classical detectors: (boxes xyxy (k, 4), scores (k,), class ids (k,)) of one tile in 0..1 --------------
def detect_log(image: np.ndarray, min_sigma: float, max_sigma: float, box_scale: float) -> tuple:
    from scipy import ndimage as ndi
    from skimage.feature import blob_log

    h, w = image.shape
    boxes, scores = [], []
    for y, x, s in blob_log(image, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=10,
                            threshold=LOG_THRESHOLD, overlap=0.5):
        r = box_scale * np.sqrt(2.0) * s
        cy, cx = y + 0.5, x + 0.5  # pixel centre, boxes are on pixel edges
        boxes.append([max(cx - r, 0.0), max(cy - r, 0.0), min(cx + r, w), min(cy + r, h)])
        k = int(np.ceil(4 * s))
        y0, x0 = max(int(y) - k, 0), max(int(x) - k, 0)
        crop = image[y0:int(y) + k + 1, x0:int(x) + k + 1]
        scores.append(float(-s * s * ndi.gaussian_laplace(crop, s, mode="reflect")[int(y) - y0, int(x) - x0]))
    return np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float), np.zeros(len(scores), int)


def detect_otsu(image: np.ndarray, min_area: int, min_distance: int, smooth: float) -> tuple:
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.segmentation import watershed

    smoothed = ndi.gaussian_filter(image, smooth) if smooth else image
    mask = smoothed > threshold_otsu(smoothed)
    labels = label(mask)
    if min_distance:
        distance = ndi.distance_transform_edt(mask)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=labels, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=mask)
    boxes, scores = [], []
    for region in regionprops(labels, intensity_image=image):
        if region.area < min_area:
            continue
        r0, c0, r1, c1 = region.bbox
        boxes.append([c0, r0, c1, r1])
        scores.append(float(region.intensity_mean))
    return np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float), np.zeros(len(scores), int)


DETECTORS = {"log": detect_log, "otsu": detect_otsu}


def read_split(ref: str, data, classes=None) -> tuple[list, list, list[str]]:
    """``(images in 0..1, truth [(boxes, labels)], classes)``, each tile at its own size."""
    from tlmulti.data.boxes import load_detection_images, read_boxes
    from tlmulti.data.manifest import resolve_source

    records, classes = read_boxes(resolve_source(ref) if ref.startswith("dataset:") else ref, classes)
    intensity = {"normalize": data.normalize, "percentiles": tuple(data.percentiles)}
    images = [load_detection_images([r], r.size, channels=1, **intensity)[0, ..., 0].astype(np.float32) / 255.0
              for r in records]
    return images, [(r.boxes, r.labels) for r in records], classes


def at_threshold(truth, dets, threshold: float) -> dict:
    from tlmulti.evaluation.detection import threshold_curve

    kept = [(b[s >= threshold], s[s >= threshold], c[s >= threshold]) for b, s, c in dets]
    at = threshold_curve(truth, kept)
    n = len(at["precision"])
    return {k: round(at[k][-1], 6) if n else 0.0 for k in ("precision", "recall", "f1")}


def run_classical(recipe) -> tuple[dict, list[dict]]:
    from tlmulti.evaluation.detection import coco_metrics, threshold_curve

    t0 = time.perf_counter()
    data = recipe.data
    train_x, train_y, classes = read_split(data.train, data)
    val_x, val_y, _ = read_split(data.val, data, classes)
    test_x, test_y, _ = read_split(data.test, data, classes)
    tune_x, tune_y = train_x + val_x, train_y + val_y
    grid = []
    for method, axes in GRIDS.items():
        for values in itertools.product(*axes.values()):
            params = dict(zip(axes, values))
            dets = [DETECTORS[method](x, **params) for x in tune_x]
            m = coco_metrics(tune_y, dets, classes)
            grid.append({"method": method, "params": params, "map50": m["map50"], "map": m["map"]})
    best = max(grid, key=lambda g: (g["map50"], g["map"]))
    detect = DETECTORS[best["method"]]
    tune_dets = [detect(x, **best["params"]) for x in tune_x]
    curve = threshold_curve(tune_y, tune_dets)
    tune_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    dets = [detect(x, **best["params"]) for x in test_x]
    test = coco_metrics(test_y, dets, classes)
    test.update(at_threshold(test_y, dets, curve["best_threshold"]), score_threshold=curve["best_threshold"])
    test_seconds = time.perf_counter() - t1
    row = {"config": "classical", "seed": None, "map50": test["map50"], "map": test["map"], "map75": test["map75"],
           "precision": test["precision"], "recall": test["recall"], "f1": test["f1"],
           "score_threshold": test["score_threshold"], "seconds": round(time.perf_counter() - t0, 1),
           "method": best["method"], "params": best["params"],
           "tune": {"images": len(tune_x), "map50": best["map50"], "map": best["map"], "best_f1": curve["best_f1"],
                    "seconds": round(tune_seconds, 1)},
           "test_seconds": round(test_seconds, 2), "n_detections": test["n_detections"], "n_boxes": test["n_boxes"]}
    return row, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra recipe override (data.* ones reach the classical arm too)")
    parser.add_argument("--json", dest="json_path", help="write the results here")
    args = parser.parse_args()

    import tlmulti

    names = args.configs
    rows, grid = [], []
    t_all = time.perf_counter()
    if "classical" in names:
        row, grid = run_classical(tlmulti.load_recipe(args.recipe, overrides=args.overrides))
        rows.append(row)
        print(f"{'classical':<11} {row['method']} {row['params']} (train+val mAP@0.5 {row['tune']['map50']:.4f}, "
              f"{row['tune']['images']} tiles): mAP@0.5 {row['map50']:.4f}  mAP {row['map']:.4f}  "
              f"F1 {row['f1']:.4f}  {row['seconds']:.1f} s", flush=True)
    trained = [n for n in names if CONFIGS[n] is not None]
    if trained:
        import keras

        with tempfile.TemporaryDirectory() as tmp:
            for name in trained:
                for seed in args.seeds:
                    keras.backend.clear_session()
                    recipe = tlmulti.load_recipe(args.recipe, overrides=[
                        "callbacks.verbose=0", f"seed={seed}", *CONFIGS[name], *args.overrides])
                    t0 = time.perf_counter()
                    run = tlmulti.train(recipe, out=os.path.join(tmp, f"{name}-{seed}"))
                    seconds = time.perf_counter() - t0
                    test = run.metrics["test"]
                    row = {"config": name, "seed": seed, "map50": test["map50"], "map": test["map"],
                           "map75": test["map75"], "precision": test["precision"], "recall": test["recall"],
                           "f1": test["f1"], "score_threshold": test["score_threshold"],
                           "seconds": round(seconds, 1),
                           "epochs": [p["epochs_run"] for p in run.metrics["phases"]],
                           "phase_seconds": run.metrics["timing"]["phase_seconds"]}
                    rows.append(row)
                    print(f"{name:<11} seed {seed}: mAP@0.5 {row['map50']:.4f}  mAP {row['map']:.4f}  "
                          f"F1 {row['f1']:.4f}  epochs {row['epochs']}  {seconds:.0f} s", flush=True)
    total = time.perf_counter() - t_all

    means = {}
    for name in names:
        sel = [r for r in rows if r["config"] == name]
        means[name] = {k: sum(r[k] for r in sel) / len(sel)
                       for k in ("map50", "map", "precision", "recall", "f1", "seconds")}
    print(f"\n{'config':<12}{'mAP@0.5':>9}{'mAP':>9}{'prec':>8}{'recall':>8}{'F1':>8}{'wall s':>9}")
    for name, m in means.items():
        print(f"{name:<12}{m['map50']:>9.4f}{m['map']:>9.4f}{m['precision']:>8.3f}{m['recall']:>8.3f}"
              f"{m['f1']:>8.3f}{m['seconds']:>9.1f}")
    ratios = {}
    for other in ("random", "classical"):
        if "pretrained" in means and other in means:
            den = means[other]["map50"]
            ratios[f"map50_pretrained_over_{other}"] = round(means["pretrained"]["map50"] / den, 4) if den else None
            shown = f"{ratios[f'map50_pretrained_over_{other}']:.2f}x" if den else "n/a (zero)"
            print(f"mAP@0.5 pretrained / {other}: {shown}")
    print(f"total wall time {total:.0f} s on {os.cpu_count()} CPU core(s)")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"rows": rows, "means": means, "ratios": ratios, "classical_grid": grid,
                       "total_seconds": round(total, 1), "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
