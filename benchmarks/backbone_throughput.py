"""Forward and fine-tuning throughput of image backbones on this machine, images per second.

Forward: the frozen backbone's inference pass (what the frozen phase's feature cache costs).
Fine-tuning: one training step of the backbone with its top groups unfrozen plus a small head
(what an unfreeze phase costs per image). Both measured after a warm-up, same batch and size
for every backbone, in this process.

    python benchmarks/backbone_throughput.py --backbones efficientnet_lite0.imagenet vgg16.hed_bsds500 \
        --sizes 96 128 224 --unfreeze top:2
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(name: str, size: int, batch: int, unfreeze: str, steps: int) -> dict:
    import keras
    import numpy as np

    from tlmulti import registry
    from tlmulti.backbones import load_backbone
    from tlmulti.layers.image import ImagePreprocessing
    from tlmulti.tasks.base import resolve_groups
    from tlmulti.training.freezing import resolve_unfreeze, set_trainable

    keras.backend.clear_session()
    spec = registry.get_backbone(name)
    backbone = load_backbone(spec, input_shape=(size, size, 3))
    groups = resolve_groups(backbone, spec)
    inputs = keras.Input((size, size, 3))
    x = ImagePreprocessing((size, size), 3, spec.input.get("normalization", "unit"))(inputs)
    feats = backbone(x, training=False)
    pooled = keras.layers.GlobalAveragePooling2D()(feats)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(pooled))
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3)).astype("float32")
    labels = np.arange(batch) % 10

    forward = keras.Model(inputs, feats)
    forward.predict(images, verbose=0)
    t = time.perf_counter()
    for _ in range(steps):
        forward.predict(images, verbose=0)
    fwd = batch * steps / (time.perf_counter() - t)

    set_trainable(backbone, groups, resolve_unfreeze(unfreeze, list(groups)), "frozen")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    model.train_on_batch(images, labels)
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    tune = batch * steps / (time.perf_counter() - t)
    return {"backbone": name, "size": size, "forward_images_per_s": round(fwd, 1),
            "finetune_images_per_s": round(tune, 1), "unfreeze": unfreeze}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0.imagenet", "vgg16.hed_bsds500"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--unfreeze", default="top:2")
    args = parser.parse_args()
    rows = [measure(b, s, args.batch, args.unfreeze, args.steps) for s in args.sizes for b in args.backbones]
    print(f"{'backbone':<30}{'size':>6}{'forward img/s':>15}{'fine-tune img/s':>17}")
    for r in rows:
        print(f"{r['backbone']:<30}{r['size']:>6}{r['forward_images_per_s']:>15}{r['finetune_images_per_s']:>17}")
    base = rows[0]
    for r in rows[1:]:
        if r["size"] == base["size"]:
            print(f"{base['backbone']} vs {r['backbone']} at {r['size']} px: forward "
                  f"{base['forward_images_per_s'] / r['forward_images_per_s']:.2f}x, fine-tune "
                  f"{base['finetune_images_per_s'] / r['finetune_images_per_s']:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
