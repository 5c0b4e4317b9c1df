"""Grad-CAM saliency for image classifiers (Selvaraju et al., 2017), on ``tf.GradientTape``.

The map is computed on the backbone's last 4-D feature layer (the one the head pools): each
channel of that feature map is weighted by the spatial mean of the gradient of the class score
with respect to it, the weighted sum is passed through a ReLU and divided by its maximum, so
values run 0..1. The class score comes from the logits of the head's output layer (before its
softmax or sigmoid, see :meth:`GradCam._score`); a head without a final Dense layer falls back
to the log-probability.

The model is the run's inference model: raw pixels in, preprocessing layers inside, then the
backbone, then the head (and, for calibrated runs, a temperature layer). :class:`GradCam`
finds those parts in the model's top-level layers; a backbone whose output is already pooled
(no 4-D output) is explained on the last 4-D layer inside it.

Example::

    cam = GradCam(model)
    maps, classes, probs = cam(images)               # (N, h, w) 0..1 at the feature resolution
    heat = upsample(maps[0], image.shape[:2])        # float32 0..1 at the image's own size
    Image.fromarray(overlay(image, heat)).save("explained.png")
"""

from __future__ import annotations

import numpy as np

from tlmulti.errors import RunError

BATCH = 32


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs")


def _spatial(tensor) -> bool:
    shape = getattr(tensor, "shape", None)
    return shape is not None and len(shape) == 4


def _inner_maps(model) -> list:
    """The layers inside ``model`` (not its inputs) whose output is a 4-D feature map."""
    return [l for l in model.layers if l.__class__.__name__ != "InputLayer" and _spatial(getattr(l, "output", None))]


class GradCam:
    """Grad-CAM of a classification model: ``cam(x)`` with ``x`` a batch of images as the model
    takes them (``(N, H, W, C)``, 0..255) gives ``(maps, classes, probabilities)``; ``classes``
    (one index per image) picks the class explained, by default the most probable one."""

    def __init__(self, model):
        import keras

        self.model = model
        chain = [l for l in model.layers if l.__class__.__name__ != "InputLayer"]
        self.layer_name = None
        for k in range(len(chain) - 1, -1, -1):  # the last nested model that holds a feature map
            layer = chain[k]
            if not _is_model(layer):
                continue
            if _spatial(layer.output) and _inner_maps(layer):
                self.backbone, self.layer_name = layer, layer.layers[-1].name
                self.features = layer
                break
            inner = _inner_maps(layer)
            if inner and not _spatial(layer.output):
                self.backbone, self.layer_name = layer, inner[-1].name
                self.features = keras.Model(layer.inputs, [inner[-1].output, layer.output])
                break
        if self.layer_name is None:
            raise RunError(f"Model '{model.name}' has no backbone with a 4-D feature map (height x width x "
                           "channels) to explain; saliency maps need a convolutional backbone.")
        self.before, self.after = chain[:k], chain[k + 1:]
        self.logits = None
        head = next((l for l in self.after if _is_model(l)), None)
        last = head.layers[-1] if head is not None and head.layers else None
        if last is not None and last.__class__.__name__ == "Dense" and self.after[0] is head:
            self.logits = (keras.Model(head.inputs, last.input), last)

    def _logits(self, out):
        import tensorflow as tf

        if self.logits is not None:
            pre, dense = self.logits
            z = tf.matmul(tf.cast(pre(out, training=False), tf.float32), tf.cast(dense.kernel, tf.float32))
            return z + tf.cast(dense.bias, tf.float32) if dense.use_bias else z
        for layer in self.after:
            out = layer(out, training=False)
        return tf.math.log(tf.clip_by_value(tf.cast(out, tf.float32), 1e-7, 1.0))

    def _score(self, z, classes):
        """The score explained: a sigmoid label's logit; for a softmax head, the class's logit
        minus the other logits weighted by their probabilities (the direction of the gradient of
        the log-probability, which adding one vector to every class's weights, a change softmax
        cannot see, leaves alone; unlike it, it does not vanish as the probability nears 1)."""
        import tensorflow as tf

        index = tf.convert_to_tensor(np.asarray(classes, np.int32))
        own = tf.gather(z, index, axis=1, batch_dims=1)
        activation = getattr(getattr(self.logits[1], "activation", None), "__name__", "") if self.logits else ""
        if activation != "softmax" or z.shape[-1] < 2:
            return own
        mask = tf.one_hot(index, z.shape[-1], dtype=z.dtype)
        others = tf.stop_gradient(tf.nn.softmax(z - 1e9 * mask))  # the other classes' probabilities, renormalised
        return own - tf.reduce_sum(others * z, axis=1)

    def _batch(self, x, classes):
        import tensorflow as tf

        z = tf.convert_to_tensor(np.asarray(x, np.float32))
        for layer in self.before:
            z = layer(z, training=False)
        probs = np.asarray(self.model(tf.convert_to_tensor(np.asarray(x, np.float32)), training=False))
        if classes is None:
            classes = probs.argmax(axis=1)
        with tf.GradientTape() as tape:
            tape.watch(z)
            got = self.features(z, training=False)
            feats, out = (got, got) if not isinstance(got, (list, tuple)) else got
            z = self._logits(out)
            if not np.array_equal(np.asarray(z).argmax(1), probs.argmax(1)):
                raise RunError(f"Model '{self.model.name}' is not a plain chain of preprocessing, backbone and "
                               "head; its saliency maps cannot be computed.")
            picked = self._score(z, classes)
        grads = tape.gradient(picked, feats)
        feats, grads = np.asarray(feats, np.float32), np.asarray(grads, np.float32)
        weights = grads.mean(axis=(1, 2), keepdims=True)
        maps = np.maximum((weights * feats).sum(axis=-1), 0.0)
        top = maps.reshape(len(maps), -1).max(axis=1)
        maps = np.where(top[:, None, None] > 0, maps / np.maximum(top, 1e-12)[:, None, None], 0.0)
        return maps.astype(np.float32), np.asarray(classes, np.int64), probs

    def __call__(self, x, classes=None):
        x = np.asarray(x)
        parts = [self._batch(x[i:i + BATCH], None if classes is None else np.asarray(classes)[i:i + BATCH])
                 for i in range(0, len(x), BATCH)]
        if not parts:
            return np.zeros((0, 1, 1), np.float32), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))


def upsample(cam: np.ndarray, shape) -> np.ndarray:
    """A feature-resolution map resized (bilinear) to ``shape=(H, W)``: float32, values 0..1
    with the maximum at 1 (all zeros when the map is)."""
    from PIL import Image

    h, w = int(shape[0]), int(shape[1])
    big = np.asarray(Image.fromarray(np.asarray(cam, np.float32), mode="F").resize((w, h), Image.BILINEAR))
    big = np.clip(big, 0.0, None)
    top = float(big.max()) if big.size else 0.0
    return (big / top if top > 0 else np.zeros_like(big)).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """RGB uint8: ``image`` (grey images stay grey) under ``heat`` (0..1, the image's height x
    width) drawn with a matplotlib colour map, blended by ``alpha`` times the heat, so cold
    regions show the image itself."""
    from matplotlib import colormaps

    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    rgb = np.repeat(a[..., :1], 3, axis=-1) if a.shape[-1] != 3 else a
    heat = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    colour = colormaps[cmap](heat)[..., :3] * 255.0
    weight = alpha * (0.25 + 0.75 * heat)[..., None]
    return ((1 - weight) * rgb.astype(np.float32) + weight * colour).round().clip(0, 255).astype(np.uint8)


def peak(heat: np.ndarray) -> tuple[int, int]:
    """``(row, column)`` of the map's maximum."""
    r, c = np.unravel_index(int(np.argmax(heat)), np.asarray(heat).shape[:2])
    return int(r), int(c)


def pointing_hit(heat: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> bool:
    """The pointing game: whether the map's maximum falls inside the object (``mask`` true), or
    within ``tolerance`` pixels of it (Zhang et al., 2016, allow 15)."""
    r, c = peak(heat)
    mask = np.asarray(mask, bool)
    if mask[r, c] or tolerance <= 0:
        return bool(mask[r, c])
    ys, xs = np.nonzero(mask)
    return bool(ys.size and ((ys - r) ** 2 + (xs - c) ** 2).min() <= tolerance ** 2)
