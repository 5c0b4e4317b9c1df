"""Does the pretrained backbone help? The default image recipe against two baselines, one process.

Runs ``recipes/vision/fashion_mnist.yaml`` on the same split and prints test accuracy and wall
time of: the full recipe (EfficientNet-Lite0: frozen head phase, then the top three groups
unfrozen), the recipe without the unfreeze phase, the same architecture and phases from random
initialisation (frozen BatchNorm, as the recipe; and trained end to end with BatchNorm training,
10 epochs: the fair from-scratch baseline), and the former offline backbone VGG16-HED with its former settings (64 px, top
two blocks unfrozen: at 224 px it is about 12x slower on a CPU).

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
    # a deep random network with frozen BatchNorm is a degenerate baseline; this one trains it all,
    # without early stopping (whose best epoch comes before BatchNorm's moving statistics settle)
    "random init, trained end to end": ["backbone.weights=random", "phases.0.epochs=0", "phases.1.epochs=10",
                                        "phases.1.unfreeze=all", "phases.1.batchnorm=train",
                                        "phases.1.learning_rate=1.0e-3", "phases.1.lr_decay=1.0",
                                        "callbacks.early_stopping.enabled=false"],
    "VGG16-HED (64 px, top:2)": ["backbone.name=vgg16.hed_bsds500", "data.image_size=[64, 64]",
                                 "phases.1.unfreeze=top:2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/vision/fashion_mnist.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()

    import tlmulti

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(args.variants):
            extra = VARIANTS[label]
            recipe = tlmulti.load_recipe(args.recipe, overrides=["callbacks.verbose=0", *args.overrides, *extra])
            t0 = time.perf_counter()
            run = tlmulti.train(recipe, out=os.path.join(tmp, f"run{i}"))
            rows.append((label, run.metrics["test"]["accuracy"], run.metrics["test"]["macro_f1"],
                         time.perf_counter() - t0))
            print(f"{label}: accuracy {rows[-1][1]:.4f}", flush=True)
    print(f"\n{'variant':<44}{'test acc':>10}{'macro F1':>10}{'seconds':>10}")
    for label, acc, f1, secs in rows:
        print(f"{label:<44}{acc:>10.4f}{f1:>10.4f}{secs:>10.1f}")
    by = {label: acc for label, acc, _, _ in rows}
    if "random init, same phases" in by and rows[0][0] != "random init, same phases":
        print(f"\n{rows[0][0]} vs random init: {rows[0][1] - by['random init, same phases']:+.4f} accuracy")


if __name__ == "__main__":
    main()
