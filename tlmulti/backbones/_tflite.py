"""Read the constant tensors (weights) of a TensorFlow Lite flatbuffer as numpy arrays.

A ``.tflite`` file stores a model's weights as constant tensors next to its op graph. Porting such
a model to Keras means rebuilding the graph with Keras layers and copying these tensors in (see
:func:`tlmulti.architectures.speech_embedding.assign_tflite`); this module does the reading,
with an optional sha256 check so a wrong or corrupt file is refused before anything is copied.

Example::

    from tlmulti.backbones._tflite import read_tflite_tensors
    tensors = read_tflite_tensors("embedding_model.tflite")
    print(tensors["model/conv2d/Conv2D"].shape)   # (24, 3, 3, 1): TFLite's (out, h, w, in)
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from tlmulti.backbones._store import verify_file
from tlmulti.errors import MissingWeightsError

__all__ = ["read_tflite_tensors"]



def read_tflite_tensors(path: str | os.PathLike, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The constant tensors of the TFLite model in ``path``, by tensor name, as numpy arrays.

    Constants are the tensors that no op produces and that are not model inputs (kernels,
    biases, shape and scalar operands), in TFLite's own layouts (a ``CONV_2D`` kernel is
    ``(out, height, width, in)``). A name that occurs twice gets ``#<tensor index>`` appended.
    ``sha256`` (hex), when given, is checked first. Raises :class:`MissingWeightsError` for a
    missing, mismatching or unreadable file.
    """
    path = verify_file(path, sha256, "TFLite file")
    import tensorflow as tf

    try:
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
            warnings.simplefilter("ignore", UserWarning)
            interpreter = tf.lite.Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as e:
        raise MissingWeightsError(f"TFLite file '{path}' cannot be read ({e}); it may be truncated or corrupt.") from None
    produced = {int(i) for op in interpreter._get_ops_details() for i in op["outputs"]}
    inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    details = [d for d in interpreter.get_tensor_details()
               if d["index"] not in produced and d["index"] not in inputs]
    names = [d["name"] for d in details]
    tensors: dict[str, np.ndarray] = {}
    for d in details:
        try:
            value = np.array(interpreter.get_tensor(d["index"]))
        except ValueError:
            continue
        key = d["name"] if names.count(d["name"]) == 1 else f"{d['name']}#{d['index']}"
        tensors[key] = value
    return tensors
