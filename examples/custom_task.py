"""Register your own task: image classification read from NumPy ``.npz`` archives.

Many labs keep image sets as ``.npz`` archives (as MedMNIST does) instead of image files. This
example subclasses tlmulti's image classification task with a reader of such archives (arrays
``images`` and ``labels``, optional ``label_names``; every other 1-D array, e.g. ``site``,
becomes a metadata column), declares the recipe keys the reader takes (``data.images_key``,
``data.labels_key``) as its data config, registers it with ``tlmulti.register_task`` and trains
it with the shared trainer from a YAML recipe: a head on frozen EfficientNet-Lite0 (ImageNet)
features, then the top layer groups fine-tuned. It then evaluates the run per acquisition
site and predicts the images of an unlabelled archive.

The archives are made by the script: grey 32x32 textures (stripes, checkerboard, dots) with
random scale, angle, contrast and noise, from two sites that differ in brightness.

    python examples/custom_task.py [--out runs/custom_task] [--quick]

``--quick`` uses fewer images, a smaller input size and fewer epochs (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tlmulti
from tlmulti.task_configs import ImageDataConfig
from tlmulti.tasks.image_classification import ImageClassification

TASK = "npz_image_classification"
CLASSES = ("checker", "dots", "stripes")


# -- the task ------------------------------------------------------------------------------------

@dataclass
class NpzDataConfig(ImageDataConfig):
    """The image data keys, plus where the archives keep their arrays."""

    images_key: str = "images"
    labels_key: str = "labels"


class NpzImageClassification(ImageClassification):
    """Image classification whose data are ``.npz`` archives: ``images`` (N, H, W) or
    (N, H, W, C) uint8, ``labels`` (N,) class names or ids (ids name ``label_names``)."""

    name = TASK
    family = "vision"

    def _archive(self, ref) -> dict:
        from tlmulti.data import resolve_source

        path = resolve_source(str(ref))
        if path.suffix != ".npz":
            raise tlmulti.DataError(f"'{path}' is not an .npz archive; this task reads .npz files only.")
        with np.load(path, allow_pickle=False) as archive:
            return {"path": path, **{k: archive[k] for k in archive.files}}

    def _pixels(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W[, C]) -> (N, H, W, channels) uint8; the model resizes to data.image_size."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[..., None]
        channels = self.channels()
        if x.shape[-1] == 1 and channels == 3:
            x = np.repeat(x, 3, axis=-1)
        return x.astype(np.uint8)

    def read(self, ref, classes=None, labelled=True):
        from tlmulti.data import Examples
        from tlmulti.data.examples import reader_labels

        data = self.recipe.data
        archive = self._archive(ref)
        where = str(archive["path"])
        if data.images_key not in archive:
            raise tlmulti.DataError(f"'{where}' has no array '{data.images_key}' (key data.images_key); "
                                    f"arrays: {', '.join(k for k in archive if k != 'path')}.")
        x = self._pixels(archive[data.images_key])
        n = len(x)
        labels = None
        if labelled:
            if data.labels_key not in archive:
                raise tlmulti.DataError(f"'{where}' has no array '{data.labels_key}' (key data.labels_key).")
            labels = archive[data.labels_key].reshape(-1)
            if labels.dtype.kind in "iu" and "label_names" in archive:
                labels = archive["label_names"][labels]
        y, classes = reader_labels(labels if labels is not None else [], classes, labelled, where)
        meta = {"item": [f"{archive['path'].name}#{i}" for i in range(n)]}
        for key, value in archive.items():
            if key in ("path", data.images_key, data.labels_key, "label_names"):
                continue
            if isinstance(value, np.ndarray) and value.ndim == 1 and len(value) == n:
                meta[key] = [str(v) for v in value]
        return Examples(x=x, y=y, classes=classes, meta=meta)

    # every split is read whole: no files to decode lazily
    def read_split(self, ref, classes=None):
        examples = self.read(ref, classes)
        return examples, examples.classes

    def to_examples(self, items, classes):
        return items

    def read_inputs(self, items):
        xs, names = [], []
        for item in items:
            archive = self._archive(item)
            x = self._pixels(archive[self.recipe.data.images_key])
            xs.append(x)
            names += [f"{archive['path'].name}#{i}" for i in range(len(x))]
        return np.concatenate(xs), names

    def input_summary(self, train, parts=None) -> dict:
        h, w = self.image_size()
        return {"images": {"stored": "x".join(str(s) for s in train.x.shape[1:]),
                           "network_input": f"{w}x{h}x{self.channels()} "
                                            f"({self.spec.input.get('normalization', 'unit')})"}}


def register() -> None:
    """Make the task known to tlmulti: its class and its recipe sections."""
    if TASK in {spec.name for spec in tlmulti.list_tasks()}:
        return
    tlmulti.register_task(
        TASK, family="vision", implementation=f"{__name__}:NpzImageClassification",
        default_backbone="efficientnet_lite0.imagenet",
        data_config=NpzDataConfig, head_config="tlmulti.recipe:HeadConfig",
        description="Image classification from .npz archives (images, labels, metadata arrays)",
    )


# -- data -----------------------------------------------------------------------------------------

def texture(kind: str, rng, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 11)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == "stripes":
        img = np.sin(2 * np.pi * u / period)
    elif kind == "checker":
        img = np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))
    else:  # dots: a lattice of blobs
        img = (np.cos(2 * np.pi * u / period) + np.cos(2 * np.pi * v / period)) / 2
        img = np.where(img > 0.3, 1.0, -1.0)
    contrast = rng.uniform(0.3, 1.0)
    return contrast * img + rng.normal(0, 0.6, (size, size))


def make_archive(path: Path, n_per_class: int, seed: int, labelled: bool = True) -> None:
    rng = np.random.default_rng(seed)
    images, labels, sites = [], [], []
    for label, kind in enumerate(CLASSES):
        for i in range(n_per_class):
            site = ("site_a", "site_b")[i % 2]
            brightness = 110 if site == "site_a" else 150
            img = np.clip(brightness + 45 * texture(kind, rng), 0, 255)
            images.append(img.astype(np.uint8))
            labels.append(label)
            sites.append(site)
    order = rng.permutation(len(images))
    arrays = {"images": np.stack(images)[order], "site": np.array(sites)[order]}
    if labelled:
        arrays.update(labels=np.array(labels, np.int64)[order], label_names=np.array(CLASSES))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


RECIPE = """\
task: npz_image_classification
name: npz_textures
seed: 0
backbone: {{name: efficientnet_lite0.imagenet}}
head: {{pooling: avg, dropout: 0.2, label_smoothing: 0.1}}
data:
  train: {train}
  test: {test}
  images_key: images          # keys of this task's own data config
  labels_key: labels
  group_column: site          # the test metrics per site
  val_split: 0.2
  image_size: [{size}, {size}]
  batch_size: 32
  augment: {{flip: horizontal}}
phases:
  - {{name: head, epochs: {head_epochs}, learning_rate: 1.0e-3, unfreeze: none}}
  - {{name: finetune, epochs: {finetune_epochs}, learning_rate: 1.0e-4, unfreeze: top:2, lr_decay: 0.5,
     batchnorm: frozen}}
callbacks: {{early_stopping: {{monitor: val_loss, patience: 3}}}}
evaluation: {{bootstrap: 200}}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / f"custom_task-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="folder for the data, the recipe and the run folder")
    parser.add_argument("--quick", action="store_true", help="a few images and epochs (seconds, for tests)")
    args = parser.parse_args(argv)
    out = args.out
    run_dir = out / "run"
    if run_dir.exists():
        print(f"'{run_dir}' exists; give another --out.", file=sys.stderr)
        return 2

    per_class, size, head_epochs, finetune_epochs = (40, 48, 8, 1) if args.quick else (400, 96, 20, 3)
    make_archive(out / "data" / "train.npz", per_class, seed=1)
    make_archive(out / "data" / "test.npz", max(per_class // 2, 20), seed=2)
    make_archive(out / "data" / "unlabelled.npz", 2, seed=3, labelled=False)

    register()
    recipe_path = out / "recipe.yaml"
    recipe_path.write_text(RECIPE.format(train=out / "data" / "train.npz", test=out / "data" / "test.npz",
                                         size=size, head_epochs=head_epochs, finetune_epochs=finetune_epochs))
    recipe = tlmulti.load_recipe(recipe_path)
    print(f"task {recipe.task}: data section {type(recipe.data).__name__} "
          f"(images_key={recipe.data.images_key!r}, labels_key={recipe.data.labels_key!r})")

    t0 = time.perf_counter()
    run = tlmulti.train(recipe, out=run_dir)
    seconds = time.perf_counter() - t0
    test = run.metrics["test"]
    print(f"\nrun folder: {run.dir}  ({seconds:.1f} s)")
    print(f"validation accuracy {run.metrics['val']['accuracy']:.3f}")
    print(f"test accuracy {test['accuracy']:.3f}  macro F1 {test['macro_f1']:.3f}  "
          f"AUROC (macro one-vs-rest) {test['auroc']:.3f}")
    for phase in run.metrics["phases"]:
        print(f"  phase {phase['name']}: groups {phase['unfrozen_groups'] or 'none'}, {phase['seconds']:.1f} s")

    by_site = tlmulti.evaluate(run.dir, str(out / "data" / "test.npz"), group_by="site")
    print("test accuracy per site: " + ", ".join(f"{g} {v['accuracy']:.3f} (n={v['n']})"
                                                 for g, v in by_site["by_group"].items()))
    predictions = tlmulti.predict(run.dir, [str(out / "data" / "unlabelled.npz")], top_k=2)
    for p in predictions:
        print(f"  {p['input']}: " + ", ".join(f"{t['label']} {t['probability']:.2f}" for t in p["top"]))

    summary = {"run_dir": str(run.dir), "seconds": round(seconds, 1),
               "val_accuracy": run.metrics["val"]["accuracy"], "test_accuracy": test["accuracy"],
               "test_macro_f1": test["macro_f1"], "test_auroc": test["auroc"],
               "by_site": {g: v["accuracy"] for g, v in by_site["by_group"].items()},
               "predictions": predictions}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
