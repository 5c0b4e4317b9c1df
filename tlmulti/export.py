"""Export a finished run to SavedModel, TFLite or ONNX with its preprocessing inside.

The exported model takes what ``tlmulti predict`` takes, without tlmulti:

* images (classification and segmentation): raw pixels, float32 values 0..255, ``(batch, H, W,
  C)`` with the run's channel count; SavedModel and ONNX take any size (the model resizes), TFLite
  the run's fixed network size (``export.json`` states it). Segmentation returns class
  probabilities and the class map at the input size (large images are not tiled inside the
  export: tile them as ``predict`` does, or feed the network size);
* audio: mono waveforms at the run's sample rate and clip length, float32 -1..1, ``(batch,
  samples)``; the log-mel front end is inside;
* text: raw strings in SavedModel (the WordPiece tokenizer is inside). TFLite and ONNX cannot
  carry the tokenizer (its string ops are TensorFlow Text kernels that neither runtime has), so
  those take ``token_ids`` / ``padding_mask`` / ``segment_ids`` int32 ``(batch, sequence_length)``
  and the export folder holds ``vocab.txt`` and the tokenizer settings in ``export.json``
  (``[CLS] tokens [SEP]`` then ``[PAD]``), as TFLite Model Maker's text models do.

Training-only augmentation layers are removed before export (they are listed in
``export.json``). Next to the model: ``labels.txt`` (one class per line, in output order) and
``export.json`` (format, quantization, input signature with dtype / shape / value range,
preprocessing, classes, the source run and its test metrics, tlmulti / TensorFlow versions).
``--quantize`` (TFLite): ``float16`` weights, ``dynamic`` int8 weights, or ``int8`` calibrated on
a class-balanced sample of the run's training split (float inputs and outputs). The layers a task
keeps float (a speech model's log-mel front end) and, for int8, those int8 costs most stay in
float (:mod:`tlmulti.export_quality`). Every export is then measured on the run's validation
examples against the run (``check`` in ``export.json``).

The export is written into a temporary folder next to ``out`` and renamed into place once it is
complete; with ``overwrite`` the previous export is moved aside and deleted only after the new
one is in place, so a run that cannot be loaded or a failed conversion leaves the previous export
as it was. Of two exports to one ``out`` at the same time, one is kept and the other ends with an
error saying so. The disk must have room for the model's weights (plus 1 MB) before anything is
written; a full disk (ENOSPC / EDQUOT) is reported in one line naming it, with nothing left behind.

Example::

    from tlmulti.export import export_run
    export_run("runs/fashion", "tflite", "exports/fashion", quantize="int8")
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from tlmulti import choices, paths
from tlmulti import export_quality as quality
from tlmulti.errors import RunError

AUGMENTATION_CLASSES = ("WaveformAugment", "SpecAugment")
MODEL_FILES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}


def _is_augmentation(layer) -> bool:
    name = type(layer).__name__
    return name in AUGMENTATION_CLASSES or name.startswith("Random") or layer.name == "augment"


def inference_model(model):
    """``model`` without its training-only augmentation layers (the others are shared, so the
    weights are the trained ones); returns ``(model, removed layer names)``."""
    import keras

    removed = []

    class _PassThrough(keras.layers.Layer):
        def call(self, x, **kwargs):
            return x

        def compute_output_shape(self, shape):
            return shape

    def strip(layer):
        if _is_augmentation(layer):
            removed.append(layer.name)
            return _PassThrough(name=f"{layer.name}_removed")
        if isinstance(layer, keras.Sequential) and any(_is_augmentation(sub) for sub in layer.layers):
            removed.extend(sub.name for sub in layer.layers if _is_augmentation(sub))
            return keras.Sequential([sub for sub in layer.layers if not _is_augmentation(sub)], name=layer.name)
        return layer

    return keras.models.clone_model(model, clone_function=strip), removed


def export_run(run_dir, fmt: str, out, quantize: str = "none", overwrite: bool = False, check: int = quality.DEFAULT_CHECK,
               max_drop: float = quality.DEFAULT_MAX_DROP, calibration_examples: int = quality.DEFAULT_CALIBRATION,
               qat: int = 0) -> Path:
    """Write the export of finished run ``run_dir`` in format ``fmt`` into folder ``out``, then
    measure it on up to ``check`` validation examples (0: no check); see
    :mod:`tlmulti.export_quality` for ``max_drop``, ``calibration_examples`` and ``qat``."""
    import keras
    import tensorflow as tf

    from tlmulti import __version__
    from tlmulti.runs import load_run

    if fmt not in choices.EXPORT_FORMATS:
        raise RunError(f"Unknown export format '{fmt}'; use one of {', '.join(choices.EXPORT_FORMATS)}.")
    if quantize not in choices.EXPORT_QUANTIZATIONS:
        raise RunError(f"Unknown quantization '{quantize}'; use one of {', '.join(choices.EXPORT_QUANTIZATIONS)}.")
    if quantize != "none" and fmt != "tflite":
        raise RunError(f"--quantize {quantize} applies to TFLite exports; export {fmt} with --quantize none.")
    quality.check_options(quantize, check, max_drop, calibration_examples, qat)
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        _replaceable(out, overwrite)
    run_dir = Path(run_dir)
    recipe, task, model = load_run(run_dir)  # the previous export is untouched until the new one is complete
    serving, removed = inference_model(model)
    info = {"format": fmt, "quantize": quantize, "task": recipe.task, "backbone": recipe.backbone.name,
            "classes": list(task.classes), "source_run": str(run_dir.resolve()),
            "test_metrics": _test_metrics(run_dir),
            "augmentation_removed": removed, "tlmulti": __version__, "tensorflow": tf.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    info["input"], info["output"], info["preprocessing"] = task.export_signature(serving, fmt)
    serving, extra = task.export_model(serving, fmt)  # the task's outputs and input form in this format
    fix = "free some space or give --out on another disk"
    need = sum(4 * int(np.prod(w.shape)) for w in getattr(serving, "weights", []))  # float32 weights
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{time.time_ns()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        paths.check_free(out.parent, need, f"the {fmt} export", fix)
        tmp.mkdir()
        target = tmp / MODEL_FILES[fmt]
        for name, text in extra.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if fmt == "saved_model":
            serving.export(str(target), format="tf_saved_model", verbose=False)
        elif fmt == "tflite":
            info["tflite_ops"], info[quantize] = _to_tflite(serving, target, task, quantize, calibration_examples)
        else:
            _to_onnx(serving, target, task)
        (tmp / "labels.txt").write_text("\n".join(task.classes) + "\n", encoding="utf-8")
        info["file_bytes"] = sum(p.stat().st_size for p in ([target] if target.is_file() else target.rglob("*"))
                                 if p.is_file())
        info = {k: v for k, v in info.items() if v is not None}
        (tmp / "export.json").write_text(json.dumps(info, indent=2))
        if check:
            info["check"] = quality.check_export(ExportedModel(tmp), task, model, check, max_drop)
            (tmp / "export.json").write_text(json.dumps({k: v for k, v in info.items() if v is not None}, indent=2))
        _swap(tmp, out, overwrite)
    except OSError as exc:
        if paths.is_disk_full(exc):
            raise paths.disk_full(out.parent, f"the {fmt} export", fix, need + (1 << 20)) from None
        raise RunError(f"Cannot write the export to '{out}' ({exc.strerror or exc}); choose another --out.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keras.backend.clear_session()
    return out


def _test_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        test = metrics.get("test") or {}
        return {k: v for k, v in test.items() if isinstance(v, (int, float))}
    except (OSError, ValueError, AttributeError):
        raise RunError(f"'{path}' is missing or damaged; restore it from a backup, or train the run again "
                       "(its test metrics go into export.json).") from None


def _replaceable(out: Path, overwrite: bool) -> None:
    """Refuse ``out`` (a folder that is not empty) unless ``overwrite`` and it is an export."""
    if not overwrite:
        raise RunError(f"Export folder '{out}' already exists; choose another --out or pass --overwrite.")
    if not out.is_dir() or not (out / "export.json").is_file():
        raise RunError(f"'{out}' is not a tlmulti export folder (no export.json); it is never overwritten.")


def _swap(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the complete export ``tmp`` to ``out``; with ``overwrite`` the export there is moved
    aside first and deleted once the new one is in place (put back if the rename fails)."""
    clash = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)
    another = (f"Export folder '{out}' was written by another export running at the same time; that export is "
               "kept and this one was not written")
    try:
        os.rename(tmp, out)  # out absent, or an empty folder
        return
    except OSError as exc:
        if exc.errno not in clash:
            raise
    if not overwrite:
        raise RunError(f"{another}; choose another --out, or pass --overwrite to replace it.")
    _replaceable(out, overwrite)
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(out, old)
    except FileNotFoundError:  # another export with --overwrite moved it first
        pass
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if exc.errno in clash:  # another export took the place: it is complete and stays
            shutil.rmtree(old, ignore_errors=True)
            raise RunError(f"{another}.") from None
        try:
            os.rename(old, out)  # the previous export, back in place
        except OSError:
            pass
        raise
    shutil.rmtree(old, ignore_errors=True)


def _to_tflite(serving, target: Path, task, quantize: str, calibration_examples: int):
    """Convert; returns ``(ops, int8 / dynamic-range record or None)``."""
    import keras
    import tensorflow as tf

    from tlmulti.tasks.exporting import probabilities

    inputs = task.fixed_inputs(serving)
    fixed = keras.Model(inputs, serving(inputs), name="exported_fixed")  # batch 1, fixed size
    names = [t.name.split(":")[0] for t in fixed.inputs]
    specs = [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(fixed.inputs, names)]
    as_dict = isinstance(fixed.input, dict)

    @tf.function(input_signature=specs)
    def serve(*args):
        return fixed(dict(zip(names, args)) if as_dict else args[0], training=False)

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = convert_variables_to_constants_v2(serve.get_concrete_function())  # weights as constants

    def converter(select_ops: bool, mode: str = quantize):
        if as_dict:  # from_keras_model cannot trace a dict-input Keras 3 model
            conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        else:
            conv = tf.lite.TFLiteConverter.from_keras_model(fixed)
        if select_ops:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        if mode != "none":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            conv.representative_dataset = lambda: ([s[k] for k in names] for s in samples)
        return conv

    float_layers = task.export_float_layers(serving) if quantize in ("int8", "dynamic") else {}
    if quantize == "dynamic":  # the examples the float layers' benefit is measured on
        calibration_examples = min(calibration_examples, quality.AGREEMENT_EXAMPLES) if float_layers else 0
    samples, held_out = [], []
    if quantize == "int8" or (quantize == "dynamic" and calibration_examples):
        x, held = quality.calibration_inputs(task, calibration_examples,
                                             quality.HELD_OUT_EXAMPLES if quantize == "int8" else 0)
        samples, held_out = task.representative_inputs(x), task.representative_inputs(held) if held is not None else []

    import contextlib
    import io

    quiet = contextlib.redirect_stdout(io.StringIO())  # the converter prints its traced signature
    try:
        with quiet:
            blob, ops = converter(False).convert(), "builtins"
    except Exception:  # an op outside the TFLite builtins: keep TensorFlow's kernel (Flex delegate)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                blob, ops = converter(True).convert(), "builtins+select_tf_ops"
        except Exception as exc:
            raise RunError(f"TFLite conversion failed ({str(exc).strip().splitlines()[-1][:300]}).") from None
    record = None
    if samples:  # where the quantized model disagrees with float, layers are kept in float
        first = samples + held_out if quantize == "int8" else samples[:quality.AGREEMENT_EXAMPLES]
        reference = [fixed(s if as_dict else s[names[0]], training=False) for s in first]
        reference = np.concatenate([probabilities(r) for r in reference])
        select = ops != "builtins"
        if quantize == "int8":
            blob, record = quality.int8_model(blob, lambda: converter(select), samples, names, reference, float_layers,
                                              held_out)
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                float_blob = converter(select, "none").convert()
            blob, record = quality.dynamic_model(blob, float_blob, float_layers, first, names, reference)
    target.write_bytes(blob)
    return ops, record


def _to_onnx(serving, target: Path, task) -> None:
    try:
        import tf2onnx
    except ImportError:
        raise RunError("ONNX export needs tf2onnx and onnxruntime: pip install 'tlmulti[export]' "
                       "(or pip install tf2onnx onnxruntime).") from None

    spec = task.onnx_signature(serving)
    _register_onnx_handlers()
    try:
        with _collect_tf2onnx_errors() as errors:
            tf2onnx.convert.from_keras(serving, input_signature=spec, opset=17, output_path=str(target))
    except Exception as exc:
        if paths.is_disk_full(exc):
            raise
        raise RunError(f"ONNX conversion failed in tf2onnx ({str(exc).strip().splitlines()[-1][:300]}).") from None
    import onnxruntime

    try:  # tf2onnx writes a graph even when it could not convert an op: prove it loads
        onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    except Exception as exc:
        detail = "; ".join(errors[-2:]) or str(exc).strip().splitlines()[-1][:300]
        raise RunError(f"ONNX conversion of this model failed ({detail}); export saved_model or tflite instead.") from None


def _collect_tf2onnx_errors():
    """A context that keeps the error lines tf2onnx logs (unsupported ops) instead of printing them."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def collect():
        errors: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record):
                errors.append(record.getMessage())

        logger = logging.getLogger("tf2onnx")
        handler, propagate = Keep(level=logging.ERROR), logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield errors
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate

    return collect()


_ONNX_HANDLERS = []


def _register_onnx_handlers() -> None:
    """tf2onnx has no handler for TensorFlow's ``Erfc`` (exact GELU in Whisper and BERT-family
    encoders is ``0.5 * x * erfc(-x / sqrt(2))``): convert it as ``1 - Erf(x)``, which ONNX has."""
    if _ONNX_HANDLERS:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            shapes, dtypes = [ctx.get_shape(node.output[0])], [ctx.get_dtype(node.output[0])]
            ctx.remove_node(node.name)
            ctx.make_node("Sub", [one.output[0], erf.output[0]], outputs=node.output, name=node.name,
                          shapes=shapes, dtypes=dtypes)

    _ONNX_HANDLERS.append(Erfc)


class ExportedModel:
    """Runs an export folder with its own runtime (TensorFlow SavedModel, the TFLite interpreter
    or onnxruntime), so exports can be checked against the run; ``predict(x)`` takes a batch of the
    input ``export.json`` describes (an array, or a dict of arrays for token inputs) and returns
    the probabilities (a dict with ``class_map`` for segmentation; for detection every output by
    the name the runtime gives it, in the exported model's order)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.info = json.loads((self.folder / "export.json").read_text())
        fmt = self.info["format"]
        if fmt == "saved_model":
            import tensorflow as tf

            self._loaded = tf.saved_model.load(str(self.folder / MODEL_FILES[fmt]))  # keeps its variables alive
            self._fn = self._loaded.serve
        elif fmt == "tflite":
            import warnings

            import tensorflow as tf

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._interpreter = tf.lite.Interpreter(model_path=str(self.folder / MODEL_FILES[fmt]))
            self._interpreter.allocate_tensors()
        else:
            import onnxruntime

            self._session = onnxruntime.InferenceSession(str(self.folder / MODEL_FILES[fmt]),
                                                         providers=["CPUExecutionProvider"])

    def _outputs(self, values: list, names: list):
        if "class_map" in self.info["output"]:
            probs = next(v for v in values if v.ndim == 4)
            ids = next(v for v in values if v.ndim == 3)
            return {"probabilities": probs, "class_map": ids}
        if "boxes" in self.info["output"]:
            return dict(zip(names, values))
        return values[0]

    def _tflite_names(self) -> list:
        """The TFLite outputs' names in its signature (tensor names where it has none)."""
        if getattr(self, "_names", None) is None:
            try:
                runner = self._interpreter.get_signature_runner()
                named = {d["index"]: k for k, d in runner.get_output_details().items()}
            except (ValueError, KeyError):
                named = {}
            self._names = [named.get(d["index"], d["name"]) for d in self._interpreter.get_output_details()]
        return self._names

    def predict(self, x):
        fmt = self.info["format"]
        if fmt == "saved_model":
            out = self._fn(x)
            out = out if isinstance(out, dict) else {"output_0": out}
            return self._outputs([np.asarray(v) for v in out.values()], list(out))
        if fmt == "onnx":
            names = [i.name for i in self._session.get_inputs()]
            feed = {n: (x[n] if isinstance(x, dict) else x) for n in names}
            return self._outputs(self._session.run(None, feed), [o.name for o in self._session.get_outputs()])
        details = self._interpreter.get_input_details()
        n = len(next(iter(x.values())) if isinstance(x, dict) else x)
        rows = []
        for i in range(n):
            for d in details:
                value = x[d["name"].split(":")[0].split("serving_default_")[-1]] if isinstance(x, dict) else x
                self._interpreter.set_tensor(d["index"], np.asarray(value[i:i + 1], d["dtype"]))
            self._interpreter.invoke()
            rows.append([self._interpreter.get_tensor(o["index"]) for o in self._interpreter.get_output_details()])
        return self._outputs([np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))], self._tflite_names())
