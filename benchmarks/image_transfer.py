"""Does the pretrained backbone help? The default image recipe against two baselines, one process.

Runs ``recipes/vision/fashion_mnist.yaml`` three times on the same split and prints test
accuracy and wall time of: the full recipe (frozen head phase, then the top two VGG blocks
unfrozen), the recipe without the unfreeze phase, and the same architecture and phases from
random initialisation.

    python benchmarks/image_transfer.py [--recipe recipes/vision/fashion_mnist.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {
    "pretrained, frozen then unfrozen (recipe)": [],
    "pretrained, frozen only": ["phases.1.epochs=0"],
    "random init, same phases": ["backbone.weights=random"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/vision/fashion_mnist.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import tlmulti

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate(VARIANTS.items()):
            recipe = tlmulti.load_recipe(args.recipe, overrides=["callbacks.verbose=0", *args.overrides, *extra])
            t0 = time.perf_counter()
            run = tlmulti.train(recipe, out=os.path.join(tmp, f"run{i}"))
            rows.append((label, run.metrics["test"]["accuracy"], run.metrics["test"]["macro_f1"],
                         time.perf_counter() - t0))
            print(f"{label}: accuracy {rows[-1][1]:.4f}", flush=True)
    print(f"\n{'variant':<44}{'test acc':>10}{'macro F1':>10}{'seconds':>10}")
    for label, acc, f1, secs in rows:
        print(f"{label:<44}{acc:>10.4f}{f1:>10.4f}{secs:>10.1f}")
    base = rows[2][1]
    print(f"\npretrained recipe vs random init: {rows[0][1] - base:+.4f} accuracy")


if __name__ == "__main__":
    main()
