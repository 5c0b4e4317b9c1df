"""Image classification: class folders or a ``path,label`` manifest, any backbone of the vision
family, a pooled softmax head.

The exported model takes raw pixels (``(H, W, C)`` values 0..255, any size): resizing, channel
conversion and the backbone's normalisation are layers inside it.
"""

from __future__ import annotations

import numpy as np

from tlmulti.data import Examples
from tlmulti.tasks.base import ModelParts, resolve_groups
from tlmulti.tasks.classification import ClassificationTask
from tlmulti.tasks.exporting import ImageExport


class ImageTaskMixin(ImageExport):
    """Image input contract and reading, shared by classification and segmentation."""

    def image_size(self) -> tuple[int, int]:
        size = self.recipe.data.image_size or self.spec.input.get("size") or [224, 224]
        if len(size) == 1:
            size = [size[0], size[0]]
        return int(size[0]), int(size[1])

    def channels(self) -> int:
        return int(self.spec.input.get("channels", 3))

    def preprocessing_layer(self):
        from tlmulti.layers.image import ImagePreprocessing

        return ImagePreprocessing(self.image_size(), self.channels(),
                                  self.spec.input.get("normalization", "unit"), name="preprocess")

    def intensity(self) -> dict:
        data = self.recipe.data
        return {"normalize": data.normalize, "percentiles": tuple(data.percentiles),
                "window": tuple(data.window) if data.window else None, "axis": data.slice_axis}

    def read_inputs(self, items):
        from tlmulti.data.images import image_files, load_files

        files = [f for item in items for f in image_files(item)]
        x, origin = load_files(files, self.image_size(), self.channels(), **self.intensity())
        counts = np.bincount(origin, minlength=len(files))
        names, seen = [], {}
        for i in origin:
            k = seen[i] = seen.get(i, -1) + 1
            names.append(str(files[i]) if counts[i] == 1 else f"{files[i]}#slice{k}")
        return x, names


class ImageClassification(ImageTaskMixin, ClassificationTask):
    name = "image_classification"
    family = "vision"
    strategy_inputs = True
    cut_cache = True
    tta_output = "labels"
    explains = True

    def explain(self, model, items, out_dir) -> list[dict]:
        """Grad-CAM heatmaps of ``items`` written to ``out_dir`` (:mod:`tlmulti.tasks.image_saliency`)."""
        from tlmulti.tasks.image_saliency import explain_files

        return explain_files(self, model, items, out_dir)

    def worst_examples(self, model, examples: Examples, k: int = 16, probs=None) -> list[dict]:
        probs = self.probabilities(model, examples.x) if probs is None else probs
        shown = super().worst_examples(model, examples, k, probs=probs)
        return self.with_saliency(model, examples, shown, probs, np.asarray(probs).argmax(1) == np.asarray(examples.y))

    def with_saliency(self, model, examples, shown, probs, correct) -> list[dict]:
        from tlmulti.tasks.image_saliency import with_saliency

        return with_saliency(self, model, examples, shown, probs, correct)

    def read(self, ref, classes=None, labelled=True) -> Examples:
        return self.load_pixels(self.read_paths(ref, classes, labelled))

    def read_paths(self, ref, classes=None, labelled=True) -> Examples:
        """The examples of ``ref`` with file paths as ``x``, nothing decoded yet."""
        from tlmulti.data.images import CLASSIFICATION_SUFFIXES, image_files

        return self.read_files(ref, classes, labelled, CLASSIFICATION_SUFFIXES, image_files,
                               lambda paths: np.asarray(paths, dtype=object))

    def read_split(self, ref, classes=None):
        """Files only: pixels are read in :meth:`to_examples`, after ``data.limit_per_class``, the
        hold-out rules and the validation split, so a subset of a large folder decodes only the
        files it uses (a volume's slices stay on one side of the split)."""
        examples = self.read_paths(ref, classes)
        return examples, examples.classes

    def to_examples(self, items, classes) -> Examples:
        return self.load_pixels(items)

    def load_pixels(self, examples: Examples) -> Examples:
        """Examples whose ``x`` holds file paths -> the same with pixels, one example per 2-D
        image (a volume's slices share its labels and columns, and get a ``slice`` column).
        Streamed (``data.streaming``; ``auto`` past 1 GiB of decoded images, counted from the
        files' headers), ``x`` is a FileArray decoded in the input pipeline."""
        from tlmulti.data.images import image_count, load_files, stream_files
        from tlmulti.data.lazy import stream_choice

        paths = list(examples.x)
        h, w = self.image_size()
        intensity = self.intensity()
        setting = self.recipe.data.streaming
        stream_choice(setting, 0, 0)  # checks the value
        x = None
        if setting is not False:
            counts = [image_count(p, intensity["axis"]) for p in paths]
            if stream_choice(setting, sum(counts), h * w * self.channels()):
                streamed = stream_files(paths, (h, w), self.channels(), counts=counts, **intensity)
                if streamed is not None:
                    x, origin = streamed
        if x is None:
            x, origin = load_files(paths, (h, w), self.channels(), **intensity)
        if len(origin) == len(examples):
            examples.x = x
            return examples
        slices = examples.subset(origin)
        slices.x = x
        starts = np.searchsorted(origin, origin)
        slices.meta["slice"] = (np.arange(len(origin)) - starts).tolist()
        return slices

    def baseline_features(self, examples):
        from tlmulti.evaluation.baseline import pixel_features

        return "pixels", "dense", pixel_features(examples.x)

    def default_split_by(self, examples) -> str | None:
        """Slices of one volume never straddle train and validation."""
        return "path" if "slice" in examples.meta else None

    def example_content(self, examples, i):
        return {"kind": "image", "image": examples.x[i]}

    def input_summary(self, train, parts=None) -> dict:
        from tlmulti.data.images import image_info

        info = image_info(train.meta.get("path", []))
        h, w = self.image_size()
        info["network_input"] = f"{w}x{h}x{self.channels()} ({self.spec.input.get('normalization', 'unit')})"
        return {"images": info}

    def build(self, classes) -> ModelParts:
        import keras

        from tlmulti.layers.image import build_augmentation

        h, w = self.image_size()
        c = self.channels()
        backbone = self.load_backbone(input_shape=(h, w, c))
        inputs = keras.Input(shape=(None, None, c), name="image")
        head = self.build_head(backbone, len(classes))
        return ModelParts(
            inputs=inputs, backbone=backbone, head=head, preprocess=self.preprocessing_layer(),
            augment=build_augmentation(self.recipe.data.augment, seed=self.recipe.seed),
            groups=resolve_groups(backbone, self.spec),
        )
