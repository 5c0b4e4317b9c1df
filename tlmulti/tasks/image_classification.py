"""Image classification: class folders or a ``path,label`` manifest, any backbone of the vision
family, a pooled softmax head.

The exported model takes raw pixels (``(H, W, C)`` values 0..255, any size): resizing, channel
conversion and the backbone's normalisation are layers inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tlmulti import choices
from tlmulti.data import Examples
from tlmulti.recipe import DataConfig, choice
from tlmulti.tasks.base import ClassificationTask, ModelParts, resolve_groups


@dataclass
class AugmentConfig:
    """Random augmentation of training images (layers inactive at inference)."""

    flip: str = choice("none", choices.FLIPS)
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

        return self.read_files(ref, classes, labelled, IMAGE_SUFFIXES, image_files,
                               lambda paths: load_images(paths, self.image_size(), self.channels()))

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
