"""Image classification: class folders or a ``path,label`` manifest, any backbone of the vision
family, a pooled softmax head.

The exported model takes raw pixels (``(H, W, C)`` values 0..255, any size): resizing, channel
conversion and the backbone's normalisation are layers inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tlmulti.data import Examples, encode_labels, resolve_source
from tlmulti.data.manifest import rows_from
from tlmulti.errors import DataError
from tlmulti.recipe import DataConfig
from tlmulti.tasks.base import ClassificationTask, ModelParts, resolve_groups


@dataclass
class AugmentConfig:
    """Random augmentation of training images (layers inactive at inference)."""

    flip: str = "none"  # none | horizontal | vertical | both
    rotate: float = 0.0  # fraction of a full turn
    zoom: float = 0.0
    translate: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0


@dataclass
class ImageDataConfig(DataConfig):
    """``image_size`` [H, W] (empty: the backbone's contract); ``path_column`` of manifests."""

    image_size: list[int] = field(default_factory=list)
    path_column: str = "path"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


class ImageTaskMixin:
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

    def read_inputs(self, items):
        from tlmulti.data.images import image_files, load_images

        files = [f for item in items for f in image_files(item)]
        return load_images(files, self.image_size(), self.channels()), [str(f) for f in files]


class ImageClassification(ImageTaskMixin, ClassificationTask):
    name = "image_classification"
    family = "vision"
    data_config = ImageDataConfig

    def read(self, ref, classes=None, labelled=True) -> Examples:
        from tlmulti.data.images import IMAGE_SUFFIXES, image_files, load_images

        source = resolve_source(ref)
        data = self.recipe.data
        if not labelled and source.is_dir() and not any(p.is_dir() for p in source.iterdir()):
            rows = [{"path": str(p)} for p in image_files(source)]
        else:
            rows = rows_from(source, IMAGE_SUFFIXES, required=("path", "label") if labelled else ("path",),
                             label_column=data.label_column, path_column=data.path_column)
        paths = [r["path"] for r in rows]
        if labelled:
            known = classes
            y, classes = encode_labels([r["label"] for r in rows], classes, str(source))
            if known is None and len(classes) < 2:
                raise DataError(f"Data '{source}' has a single class; classification needs at least two.")
        else:
            y, classes = None, list(classes or [])
        x = load_images(paths, self.image_size(), self.channels())
        meta = {"path": paths}
        for key in rows[0]:
            if key not in ("path", "label"):
                meta[key] = [r.get(key) for r in rows]
        return Examples(x=x, y=y, classes=classes, meta=meta)

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
