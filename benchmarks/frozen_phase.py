"""Frozen-phase speed: a plain Keras loop that recomputes the frozen backbone every epoch, against
tlmulti's frozen phase with the feature cache. Same data, backbone, head and epochs, one process.

The baseline is the usual way: ``Sequential([base, pooling, Dense(256), Dense(classes)])`` with
``base.trainable = False``, ``fit`` for N epochs. tlmulti's phase computes backbone features once
and fits the same head on them.

    python benchmarks/frozen_phase.py --backbone efficientnet_lite0.imagenet --image-size 224 --pooling avg
    python benchmarks/frozen_phase.py --backbone vgg16.hed_bsds500 --image-size 32 --pooling flatten
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="efficientnet_lite0.imagenet")
    parser.add_argument("--pooling", default="avg", choices=["avg", "flatten"])
    parser.add_argument("--data", default="dataset:fashion-mnist/train")
    parser.add_argument("--test-data", default="dataset:fashion-mnist/test")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import keras

    from tlmulti.recipe import from_dict
    from tlmulti.data.pipeline import make_dataset
    from tlmulti.training.trainer import fine_tune, make_task

    recipe = from_dict({
        "task": "image_classification", "seed": 0, "backbone": {"name": args.backbone},
        "head": {"pooling": args.pooling, "hidden": [256], "dropout": 0.0},
        "data": {"train": args.data, "test": args.test_data, "image_size": [args.image_size] * 2,
                 "batch_size": args.batch_size, "val_split": 0.2},
        "phases": [{"name": "head", "epochs": args.epochs, "learning_rate": 1e-3, "unfreeze": "none"}],
        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0},
    })
    task = make_task(recipe)
    train, val, test = task.load_splits()
    print(f"data: {len(train)} train / {len(val)} val / {len(test)} test, {args.image_size}px, "
          f"backbone {args.backbone}, {args.epochs} epochs, batch {args.batch_size}")

    # Baseline: the frozen backbone runs on every batch of every epoch.
    keras.utils.set_random_seed(0)
    base = task.load_backbone(input_shape=(args.image_size, args.image_size, 3))
    base.trainable = False
    baseline = keras.Sequential([
        keras.Input((args.image_size, args.image_size, 3)), task.preprocessing_layer(), base,
        keras.layers.Flatten() if args.pooling == "flatten" else keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(len(train.classes), activation="softmax"),
    ])
    baseline.compile(keras.optimizers.Adam(1e-3), **task.compile_args())
    t0 = time.perf_counter()
    baseline.fit(make_dataset(train.x, train.y, args.batch_size, shuffle=True, seed=0),
                 validation_data=make_dataset(val.x, val.y, args.batch_size), epochs=args.epochs, verbose=0)
    t_base = time.perf_counter() - t0
    acc_base = task.evaluate(baseline, test)["accuracy"]

    # tlmulti: the same head on cached features.
    keras.utils.set_random_seed(0)
    parts = task.build(train.classes)
    t0 = time.perf_counter()
    _, records = fine_tune(parts, task, train, val, recipe)
    t_cache = time.perf_counter() - t0
    acc_cache = task.evaluate(parts.assemble(), test)["accuracy"]

    print(f"baseline (backbone every epoch): {t_base:8.1f} s   test accuracy {acc_base:.4f}")
    print(f"tlmulti frozen phase (cached):   {t_cache:8.1f} s   test accuracy {acc_cache:.4f}"
          f"   (of which feature cache {records[0].get('cache_seconds', 0):.1f} s)")
    print(f"speed-up: {t_base / t_cache:.2f}x")


if __name__ == "__main__":
    main()
