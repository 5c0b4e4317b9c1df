"""Clinical metrics on the nuclei-patches recipe: pretrained against random initialisation, a
patient-level (region) split against a random split, focal loss against cross-entropy.

Each variant is the recipe ``recipes/vision/nuclei_patches.yaml`` with a few overrides, trained
in this process one after another on the same data. Printed per variant: validation AUROC (what a
user would read while tuning), test AUROC with its bootstrap 95% interval, AUPRC, sensitivity and
specificity at the validation threshold, ECE, accuracy and wall time. With a random split the
overlapping patches of one region sit on both sides of the validation split, so validation
numbers overstate the test set; the region split keeps them honest.

    python benchmarks/medical_patches.py [--only recipe random_split ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RECIPE = "recipes/vision/nuclei_patches.yaml"
VARIANTS = {
    "recipe": [],
    "random_split": ["data.split_by=null"],
    "frozen_only": ["phases.1.epochs=0"],
    "random_init": ["backbone.weights=random"],
    "focal": ["head.loss=focal"],
}
QUIET = ["callbacks.verbose=0", "output.plots=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import tlmulti

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            t0 = time.perf_counter()
            recipe = tlmulti.load_recipe(RECIPE, overrides=VARIANTS[name] + QUIET)
            run = tlmulti.train(recipe, out=Path(tmp) / name)
            val, test = run.metrics["val"], run.metrics["test"]
            row = {"variant": name, "val_auroc": val["auroc"], "test_auroc": test["auroc"],
                   "test_auroc_ci": test["ci"]["auroc"], "test_auprc": test["auprc"],
                   "sensitivity": test["sensitivity"], "specificity": test["specificity"],
                   "threshold": test["threshold"], "ece": test["ece"], "accuracy": test["accuracy"],
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"{name}: val AUROC {row['val_auroc']:.3f}  test AUROC {row['test_auroc']:.3f} "
                  f"[{row['test_auroc_ci'][0]:.3f}, {row['test_auroc_ci'][1]:.3f}]  AUPRC {row['test_auprc']:.3f}  "
                  f"sens {row['sensitivity']:.3f} spec {row['specificity']:.3f} @ {row['threshold']:.3f}  "
                  f"ECE {row['ece']:.3f}  acc {row['accuracy']:.3f}  ({row['seconds']:.0f} s)", flush=True)
    print("\n| variant | val AUROC | test AUROC [95% CI] | AUPRC | sensitivity / specificity | ECE | accuracy | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['val_auroc']:.3f} | {r['test_auroc']:.3f} [{r['test_auroc_ci'][0]:.3f}, "
              f"{r['test_auroc_ci'][1]:.3f}] | {r['test_auprc']:.3f} | {r['sensitivity']:.3f} / "
              f"{r['specificity']:.3f} | {r['ece']:.3f} | {r['accuracy']:.3f} | {r['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
