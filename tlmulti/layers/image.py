"""Image preprocessing as a layer, so the exported model takes raw pixels.

``ImagePreprocessing`` turns raw pixel values (0..255, any channel count, any size) into what a
backbone expects: resized, converted to its channel count and normalised by its contract.
"""

from __future__ import annotations

import keras
from keras import ops

from tlmulti.choices import IMAGE_NORMALIZATIONS as NORMALIZATIONS

# Per-channel constants of the common conventions (RGB order).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tlmulti")
class ImagePreprocessing(keras.layers.Layer):
    """Resize, convert channels and normalise raw images.

    Args:
        size: ``(height, width)`` the backbone is fed at; inputs of another size are resized.
        channels: channel count the backbone expects (1 or 3). Grey inputs are repeated to 3
            channels; colour inputs become grey by averaging; an alpha channel is dropped.
        normalization: ``caffe`` (BGR, ImageNet mean subtracted: VGG, ResNet50), ``torch``
            (0..1, ImageNet mean/std), ``tf`` (-1..1), ``centered`` (``(x - 127) / 128``, the
            EfficientNet-Lite / TFLite Model Maker convention), ``unit`` (0..1) or ``none`` (the backbone
            normalises by itself, as EfficientNet and ConvNeXt in keras.applications do).

    Example::

        layer = ImagePreprocessing(size=(32, 32), channels=3, normalization="tf")
        y = layer(np.zeros((2, 28, 28, 1), "uint8"))  # (2, 32, 32, 3), values -1
    """

    def __init__(self, size, channels=3, normalization="unit", **kwargs):
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.size = tuple(int(s) for s in size)
        self.channels = int(channels)
        self.normalization = normalization

    def call(self, images):
        x = ops.cast(images, "float32")
        in_channels = x.shape[-1]
        if in_channels == 4:
            x = x[..., :3]
            in_channels = 3
        if in_channels != self.channels:
            if self.channels == 3 and in_channels == 1:
                x = ops.concatenate([x, x, x], axis=-1)
            elif self.channels == 1:
                x = ops.mean(x, axis=-1, keepdims=True)
        if tuple(x.shape[1:3]) != self.size:
            x = ops.image.resize(x, self.size, interpolation="bilinear")
        norm = self.normalization
        if norm == "caffe":
            if self.channels == 3:
                x = ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR)
            else:
                x = x - sum(_CAFFE_MEAN_BGR) / 3.0
        elif norm == "torch":
            mean = _IMAGENET_MEAN if self.channels == 3 else (sum(_IMAGENET_MEAN) / 3,)
            std = _IMAGENET_STD if self.channels == 3 else (sum(_IMAGENET_STD) / 3,)
            x = (x / 255.0 - ops.convert_to_tensor(mean)) / ops.convert_to_tensor(std)
        elif norm == "tf":
            x = x / 127.5 - 1.0
        elif norm == "centered":
            x = (x - 127.0) / 128.0
        elif norm == "unit":
            x = x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(size=list(self.size), channels=self.channels, normalization=self.normalization)
        return config


def build_augmentation(config, seed: int = 0, name: str = "augment"):
    """A ``keras.Sequential`` of random layers from an ``augment`` recipe section, or None.

    The layers act only in training; at inference they pass images through unchanged.
    """
    layers = []
    if config.flip and config.flip != "none":
        mode = {"horizontal": "horizontal", "vertical": "vertical", "both": "horizontal_and_vertical"}[config.flip]
        layers.append(keras.layers.RandomFlip(mode, seed=seed))
    if config.rotate:
        layers.append(keras.layers.RandomRotation(config.rotate, fill_mode="reflect", seed=seed))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed))
    if config.translate:
        layers.append(keras.layers.RandomTranslation(config.translate, config.translate,
                                                     fill_mode="reflect", seed=seed))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed))
    if not layers:
        return None
    return keras.Sequential(layers, name=name)
