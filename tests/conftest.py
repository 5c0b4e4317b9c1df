"""Shared test set-up: an isolated TLMULTI_HOME, quiet TensorFlow, tiny backbones and data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TLMULTI_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def tlmulti_home(tmp_path_factory, monkeypatch):
    """Each test gets its own weights/backbone/dataset store, so nothing leaks between tests."""
    home = tmp_path_factory.mktemp("tlmulti_home")
    monkeypatch.setenv("TLMULTI_HOME", str(home))
    return home


def build_tiny_cnn(spec, weights, input_shape):
    """A 3-block CNN with BatchNorm: fast enough for unit tests, with named groups."""
    import keras

    inputs = keras.Input(shape=input_shape or (16, 16, 3))
    x = inputs
    for i, filters in enumerate((4, 8, 8), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


@pytest.fixture
def tiny_backbone():
    """Registers 'tiny_cnn.test' (builder source, groups block1..block3) for the test."""
    from tlmulti import registry

    registry._ensure_builtins()
    registry.register_backbone(
        "tiny_cnn.test", source="builder", families=("vision", "segmentation"),
        builder=build_tiny_cnn, input={"size": [16, 16], "channels": 3, "normalization": "unit"},
        layer_groups={f"block{i}": [f"block{i}_.*"] for i in (1, 2, 3)},
        feature_layers=("block1_relu", "block2_relu", "block3_relu"),
        description="tiny test CNN", replace=True,
    )
    yield "tiny_cnn.test"
    registry.unregister_backbone("tiny_cnn.test")


def write_image_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 20), seed=0):
    """Class folders of small PNGs whose colour depends on the class (so they are learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((*size, 3), np.uint8)
            base[..., c % 3] = 200
            noise = rng.integers(0, 40, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")
