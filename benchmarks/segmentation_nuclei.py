"""Pretrained encoder against the same network from random initialisation, on nuclei segmentation.

Runs ``recipes/vision/nuclei_segmentation.yaml`` (U-Net over EfficientNet-Lite0, the decoder
trained on cached features, then the top two encoder groups fine-tuned) in one process:

* ``pretrained``: the encoder's offline ImageNet weights (``efficientnet_lite0.imagenet``);
* ``frozen``: the same without the fine-tuning phase;
* ``vgg16_hed``: the former offline encoder (``vgg16.hed_bsds500``: ImageNet, then HED edges);
* ``random``: the same recipe with ``backbone.weights=random`` (same phases, same frozen groups);
* ``scratch`` (``--configs ... scratch``): random initialisation trained end to end (every group
  unfrozen in the second phase, at the decoder's learning rate), the fairer from-scratch
  baseline, at a higher cost per epoch.

It prints foreground Dice, mean IoU (foreground), pixel accuracy and wall time of each, on the
held-out test region scored on the stitched image, and writes them as JSON with ``--json``.

    python benchmarks/segmentation_nuclei.py                       # pretrained and random, ~7 min
    python benchmarks/segmentation_nuclei.py --configs scratch --seeds 0 1 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "vision", "nuclei_segmentation.yaml")
CONFIGS = {
    "pretrained": [],
    "frozen": ["phases.1.epochs=0"],
    "vgg16_hed": ["backbone.name=vgg16.hed_bsds500"],
    "random": ["backbone.weights=random"],
    "scratch": ["backbone.weights=random", "phases.1.unfreeze=all", "phases.1.learning_rate=1.0e-3",
                "phases.1.lr_decay=1.0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["pretrained", "random"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe override")
    parser.add_argument("--json", dest="json_path", help="write the results here")
    args = parser.parse_args()

    import keras

    import tlmulti

    names = args.configs
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for seed in args.seeds:
                keras.backend.clear_session()
                recipe = tlmulti.load_recipe(args.recipe, overrides=[
                    "callbacks.verbose=0", f"seed={seed}", *CONFIGS[name], *args.overrides])
                t0 = time.perf_counter()
                run = tlmulti.train(recipe, out=os.path.join(tmp, f"{name}-{seed}"))
                seconds = time.perf_counter() - t0
                test = run.metrics["test"]
                row = {"config": name, "seed": seed, "dice": test["mean_dice"], "iou": test["mean_iou"],
                       "pixel_accuracy": test["pixel_accuracy"], "seconds": round(seconds, 1),
                       "epochs": [p["epochs_run"] for p in run.metrics["phases"]],
                       "phase_seconds": run.metrics["timing"]["phase_seconds"]}
                rows.append(row)
                print(f"{name:<11} seed {seed}: Dice {row['dice']:.4f}  IoU {row['iou']:.4f}  "
                      f"epochs {row['epochs']}  {seconds:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    print(f"\n{'config':<12}{'fg Dice':>9}{'fg IoU':>9}{'pixel acc':>11}{'wall s':>9}")
    for name in names:
        sel = [r for r in rows if r["config"] == name]
        mean = lambda k: sum(r[k] for r in sel) / len(sel)  # noqa: E731
        print(f"{name:<12}{mean('dice'):>9.4f}{mean('iou'):>9.4f}{mean('pixel_accuracy'):>11.4f}{mean('seconds'):>9.0f}")
    print(f"total wall time {total:.0f} s on {os.cpu_count()} CPU core(s)")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"rows": rows, "total_seconds": round(total, 1), "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    main()
