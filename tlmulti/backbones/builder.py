"""Source ``builder``: a backbone built in Python by ``builder`` (``"module:function"`` or a
callable ``(spec, weights, input_shape) -> keras.Model``).

``weights`` reaches the builder as given (None, ``random`` or a path), except two kinds of file
the source loads itself: a whole saved backbone (``.keras``) and a weights file
(``.weights.h5``), loaded into the freshly built architecture.
"""

from __future__ import annotations

from pathlib import Path

from tlmulti.backbones._store import RANDOM
from tlmulti.registry import resolve


def status(spec) -> tuple[bool, str]:
    return True, "built in code"


def load(spec, weights, input_shape):
    fn = resolve(spec.builder)
    if weights not in (None, RANDOM):
        path = Path(weights)
        if path.suffix == ".keras":
            from tlmulti.backbones.local import load_file

            return load_file(path, input_shape)
        if path.name.endswith(".weights.h5"):
            model = fn(spec, RANDOM, input_shape)
            model.load_weights(str(path))
            return model
    return fn(spec, weights, input_shape)
