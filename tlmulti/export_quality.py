"""What an export costs: int8 calibration data, the layers kept in float, and the self-check.

:func:`tlmulti.export.export_run` calls these:

* :func:`calibration_inputs`: the examples int8 calibration reads, drawn as the model sees them
  (the run's own readers and intensity settings; the resize and normalisation are inside the
  model), class-balanced, from the run's training split (never its validation split, which the
  check measures on): ``--calibration-examples`` of them (default 300, fewer where the split has
  fewer).
* :func:`int8_model`: the full-integer model is run next to the float model on every calibration
  example and on up to :data:`HELD_OUT_EXAMPLES` other training examples (held out from
  calibration); where its top-1 agreement is below :data:`AGREEMENT_TARGET`, layers are kept in float in
  turn until it is reached: the task's layers int8 cannot represent (a speech model's log-mel
  front end), the activation-by-activation matmuls (attention; :data:`MATMUL_WHY`), then the
  worst 2, 4, 8, ... layers by TFLite's quantization debugger, which compares every quantized
  layer with its float counterpart (RMSE / scale, as TensorFlow's selective-quantization guide
  ranks them). ``export.json`` names those layers, why each group stays float, and every try.
* :func:`dynamic_model`: dynamic range (int8 weights, activations quantized on the fly inside
  the kernels with int8 weights) with the task's float layers given back their float weights,
  kept where it agrees with float at least as well as the all-int8-weights model.
* :func:`check_export`: the exported file, run by its own runtime on a sample of the run's
  validation split (``--check N``, default 300; 0 skips), against the run's Keras model on the
  same examples: the metric (accuracy, mean foreground Dice for segmentation, mAP@0.5 for object
  detection), its drop, the agreement (top-1; for detection the share of the run's boxes the
  export finds), the file size and the median single-example latency on this machine. The task
  measures (``export_check_scores``). A drop beyond ``--max-drop`` (default 0.01) comes back as a
  warning naming the fix.

Quantization-aware fine-tuning (``--qat``) is refused by :func:`refuse_qat`: the TF Model
Optimization toolkit wraps only tf-keras (Keras 2) models.
"""

from __future__ import annotations

import re
import statistics
import time

import numpy as np

from tlmulti.errors import RunError
from tlmulti.tasks.exporting import rows

DEFAULT_CHECK = 300
DEFAULT_MAX_DROP = 0.01
DEFAULT_CALIBRATION = 300
FLOAT_LAYER_COUNTS = (2, 4, 8, 16, 32)  # the worst layers kept in float, tried in turn
MIN_RMSE_STEPS = 0.3  # a layer with less error (in quantization steps) always stays int8
DEBUG_EXAMPLES = 16  # calibration examples the per-layer comparison runs on
AGREEMENT_EXAMPLES = 100  # calibration examples the dynamic-range model is compared with float on
HELD_OUT_EXAMPLES = 100  # training examples outside the calibration sample the int8 model is also compared on
# every checked training example: the head was fitted on them, so their float margins are wider than unseen
# examples' and int8 flips fewer of them (0.99 on Fashion-MNIST training examples was 0.94 on validation)
AGREEMENT_TARGET = 1.0
MATMUL_OPS = ("BATCH_MATMUL",)  # products of two activations: attention scores and attention-weighted values
MATMUL_WHY = ("int8 BATCH_MATMUL multiplies two activations (attention's query-key scores and weighted values); "
              "under XNNPACK, the TFLite interpreter's default CPU kernels, its int8 result is several quantization "
              "steps from float on the same inputs where TFLite's builtin int8 kernels stay close, so it stays "
              "float; it holds no weights, so the file does not grow")
LARGEST_ERROR_WHY = (f"the largest RMSE against float in quantization steps (above {MIN_RMSE_STEPS}), as TFLite's "
                     "quantization debugger measures each layer on calibration examples")
FIXES = {"int8": "export with --quantize float16 (no measurable loss, half the size) or dynamic (int8 weights, "
                 "float activations), or calibrate on more examples (--calibration-examples); quantization-aware "
                 "fine-tuning (--qat) is not available for Keras 3 models",
         "dynamic": "export with --quantize float16, or none",
         "float16": "export with --quantize none",
         "none": "the float export should answer like the run: please report it with export.json"}


def refuse_qat(epochs: int) -> None:
    """``--qat EPOCHS``: refused with the reason and what to use instead."""
    if epochs:
        raise RunError("--qat: quantization-aware fine-tuning needs the TF Model Optimization toolkit, whose "
                       "quantize_model wraps only tf-keras (Keras 2) models; tlmulti runs are Keras 3 models, so "
                       "it cannot fine-tune them. Export with --quantize int8 and read the measured drop, or use "
                       "--quantize float16 / dynamic; leave out --qat.")


def balanced(labels, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``n`` rows, classes taken in turn (class-balanced where ``labels``
    holds one class per row, a seeded random sample otherwise)."""
    rng = np.random.default_rng(seed)
    labels = None if labels is None else np.asarray(labels)
    total = len(labels) if labels is not None else 0
    if labels is None or labels.ndim != 1:
        return np.sort(rng.permutation(total)[:n])
    groups = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [g[i] for i in range(max((len(g) for g in groups), default=0)) for g in groups if i < len(g)]
    return np.sort(np.asarray(order[:n], dtype=int))


def _sample(task, items, classes, n: int, seed: int):
    """Up to ``n`` examples of split ``items``: a balanced subset before decoding where the items
    are examples (files, texts), else the decoded examples' subset (segmentation tiles)."""
    from tlmulti.data import Examples

    if isinstance(items, Examples) and len(items) > n:
        items = items.subset(balanced(items.y if items.y is not None else np.zeros(len(items)), n, seed))
    examples = task.to_examples(items, classes)
    if len(examples) > n:
        y = examples.y if examples.y is not None and np.ndim(examples.y) == 1 else None
        examples = examples.subset(balanced(y, n, seed) if y is not None
                                   else np.sort(np.random.default_rng(seed).permutation(len(examples))[:n]))
    return examples


def calibration_inputs(task, n: int, held_out: int = 0):
    """``(calibration, held out)``: up to ``n`` training inputs of the run, class-balanced, as its
    readers give them, and up to ``held_out`` other training inputs (class-balanced, none of the
    first), which the int8 search measures agreement on too; None where the training split has no
    more examples (or its items are not examples: segmentation slides, detection records)."""
    from tlmulti.data import Examples

    train, _, classes, _ = task.split_items()
    calibration = _sample(task, train, classes, n, seed=1).x
    if not held_out or not isinstance(train, Examples) or len(train) <= n:
        return calibration, None
    picked = balanced(train.y if train.y is not None else np.zeros(len(train)), n, seed=1)  # as _sample picks
    rest = train.subset(np.setdiff1d(np.arange(len(train)), picked))
    return calibration, _sample(task, rest, classes, held_out, seed=2).x


def in_layer(tensor: str, layer: str) -> bool:
    """Whether the TFLite tensor ``tensor`` (fused names joined by ``;``) is computed inside the
    Keras layer named ``layer`` (TensorFlow scopes it ``.../layer_1/...``)."""
    pattern = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/")
    return any(pattern.search(part) for part in tensor.split(";"))


def int8_model(blob: bytes, make_converter, samples: list, names: list, reference: np.ndarray,
               float_layers: dict | None = None, held_out: list | None = None) -> tuple[bytes, dict]:
    """``(TFLite model, record)``: the full-integer model ``blob`` (calibrated on ``samples``,
    float inputs and outputs), or, where its top-1 agreement with the float model is below
    :data:`AGREEMENT_TARGET`, the same model with layers kept in float, added in turn until the
    agreement is reached (the best try is kept). Agreement is measured on every calibration
    example and on the ``held_out`` training examples (not calibrated on), ``reference`` being
    the float model's probabilities on ``samples`` then ``held_out``. The layers kept float:

    1. the task's ``float_layers`` (``{Keras layer: why}``, e.g. a speech model's log-mel front end);
    2. the :data:`MATMUL_OPS` (attention's activation-by-activation products; :data:`MATMUL_WHY`);
    3. the worst 2, 4, 8, ... other layers (:data:`FLOAT_LAYER_COUNTS`, never one below
       :data:`MIN_RMSE_STEPS`), ranked by TFLite's quantization debugger, which compares each
       quantized layer with float on :data:`DEBUG_EXAMPLES` calibration examples by RMSE in
       quantization steps.

    The model is calibrated once; every try re-quantizes it with its layers denylisted. Only
    training examples are used. ``record`` goes into ``export.json``: ``float_layers`` (every
    TFLite layer kept in float), ``float_groups`` (what they are and why) and every try."""
    import contextlib
    import io

    import tensorflow as tf

    def debug_data():
        return ([s[k] for k in names] for s in samples[:DEBUG_EXAMPLES])

    checked = list(samples) + list(held_out or [])
    record = {"calibration_examples": len(samples), "agreement_examples": {"calibration": len(samples),
              "held_out": len(checked) - len(samples)}, "activations": "int8 (per-tensor)",
              "weights": "int8 (per-channel for convolutions, per-tensor for dense layers)",
              "input_output": "float32 (quantized inside the model)",
              "float_layer_rule": f"while top-1 agreement with float on {len(checked)} training examples ("
                                  f"{len(samples)} calibrated on, {len(checked) - len(samples)} held out) is below "
                                  f"{AGREEMENT_TARGET}, in turn: the task's layers int8 cannot represent, the "
                                  f"{'/'.join(MATMUL_OPS)} ops, then the {', '.join(map(str, FLOAT_LAYER_COUNTS))} "
                                  f"layers with the largest RMSE against float (in quantization steps, above "
                                  f"{MIN_RMSE_STEPS}; on {min(DEBUG_EXAMPLES, len(samples))} calibration examples) "
                                  "stay float",
              "float_layers": [], "float_groups": []}
    agreement = _agreement(blob, checked, names, reference)
    record["tries"] = [{"float_layers": 0, "added": None, "agreement": agreement, "mb": len(blob) / 1e6}]
    if agreement >= AGREEMENT_TARGET or len(samples) < 2:  # one example: nothing to compare layers on
        return blob, record
    with contextlib.redirect_stdout(io.StringIO()):
        debugger = tf.lite.experimental.QuantizationDebugger(converter=make_converter(), debug_dataset=debug_data)
        debugger.run()
    errors, ops = _layer_errors(debugger)
    worst = sorted(errors.items(), key=lambda kv: -kv[1])
    record["worst_layers"] = [{"layer": _short(k), "op": ops[k], "rmse_steps": round(v, 3) if np.isfinite(v) else None}
                              for k, v in worst[:5]]
    stages = [(layer, why, [t for t in errors if in_layer(t, layer)]) for layer, why in (float_layers or {}).items()]
    stages.append(("/".join(MATMUL_OPS), MATMUL_WHY, [t for t in errors if ops[t] in MATMUL_OPS]))
    best = (agreement, blob, [], [])
    keep, groups = [], []

    def attempt(label: str, why: str, nodes: list) -> float:
        nonlocal best
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=keep + nodes)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                debugger.options = options  # re-quantizes the calibrated model, no new calibration
                selective = debugger.get_nondebug_quantized_model()
        except ValueError:  # no quantized layer left
            return -1.0
        score = _agreement(selective, checked, names, reference)
        record["tries"].append({"float_layers": len(keep) + len(nodes), "added": label, "agreement": score,
                                "mb": len(selective) / 1e6})
        if score > best[0]:
            best = (score, selective, keep + nodes, groups + [{"layers": label, "why": why, "count": len(nodes)}])
        return score

    for label, why, nodes in stages:
        nodes = [t for t in nodes if t not in keep]
        if not nodes:
            continue
        if attempt(label, why, nodes) >= AGREEMENT_TARGET:
            break
        keep += nodes
        groups.append({"layers": label, "why": why, "count": len(nodes)})
    else:
        candidates = [k for k, v in worst if v > MIN_RMSE_STEPS and k not in keep]
        tried = 0
        for count in FLOAT_LAYER_COUNTS:
            extra = candidates[:count]
            if len(extra) <= tried:
                break
            tried = len(extra)
            if attempt("largest error", LARGEST_ERROR_WHY, extra) >= AGREEMENT_TARGET:
                break
    record["float_layers"] = [_short(k) for k in best[2]]
    record["float_groups"] = best[3]
    return best[1], record


def dynamic_model(blob: bytes, float_blob: bytes, float_layers: dict, samples: list, names: list,
                  reference: np.ndarray) -> tuple[bytes, dict]:
    """``(TFLite model, record)``: the dynamic-range model ``blob`` (int8 weights; kernels with int8
    weights quantize their float input on the fly, per example or per row), with the ops inside
    the task's ``float_layers`` (``{Keras layer: why}``) given back their float32 weights from
    ``float_blob`` (the same model converted without quantization), so those ops run float
    kernels. TFLite's converter has no per-layer choice for dynamic range, so the weights are
    swapped in the flatbuffer (``tensorflow.lite.tools.flatbuffer_utils``). Both models are run
    on the calibration ``samples`` against ``reference`` and the one agreeing more with float is
    kept; ``record`` goes into ``export.json``."""
    record = {"weights": "int8 (per-channel for convolutions)", "activations": "float32 (quantized on the fly inside "
              "the kernels with int8 weights)", "float_layers": [], "float_groups": []}
    if not float_layers or not samples:
        return blob, record
    agreement = _agreement(blob, samples, names, reference)
    record["tries"] = [{"float_layers": 0, "added": None, "agreement": agreement, "mb": len(blob) / 1e6}]
    kept_blob, kept = _float_weights(blob, float_blob, list(float_layers))
    if not kept:
        return blob, record
    score = _agreement(kept_blob, samples, names, reference)
    count = sum(len(v) for v in kept.values())
    record["tries"].append({"float_layers": count, "added": "+".join(kept), "agreement": score,
                            "mb": len(kept_blob) / 1e6})
    if score < agreement:
        return blob, record
    record["float_layers"] = [_short(t) for layer in kept for t, _ in kept[layer]]
    record["float_groups"] = [{"layers": layer, "why": float_layers[layer], "count": len(kept[layer]),
                               "ops": sorted({op for _, op in kept[layer]})} for layer in kept]
    return kept_blob, record


def _float_weights(blob: bytes, float_blob: bytes, layers: list) -> tuple[bytes, dict]:
    """``(model, {layer: [(tensor, op)]})``: ``blob`` with every int8 weight of the ops inside
    Keras ``layers`` replaced by the float32 weight at the same input of the same op (matched by
    output tensor name) in ``float_blob``."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    source = flatbuffer_utils.read_model_from_bytearray(bytearray(float_blob))
    graph, float_graph = model.subgraphs[0], source.subgraphs[0]

    def name(tensor) -> str:
        return tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name

    twins = {name(float_graph.tensors[op.outputs[0]]): op for op in float_graph.operators if len(op.outputs)}
    kept: dict = {}
    for op in graph.operators:
        out = name(graph.tensors[op.outputs[0]]) if len(op.outputs) else ""
        layer = next((layer for layer in layers if in_layer(out, layer)), None)
        twin = twins.get(out)
        if layer is None or twin is None or len(twin.inputs) != len(op.inputs):
            continue
        for index, twin_index in zip(op.inputs, twin.inputs):
            tensor = graph.tensors[index] if index >= 0 else None
            if tensor is None or tensor.type != schema.TensorType.INT8 or model.buffers[tensor.buffer].data is None:
                continue
            weight = float_graph.tensors[twin_index]
            if weight.type != schema.TensorType.FLOAT32 or list(weight.shape) != list(tensor.shape):
                continue
            tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
            model.buffers[tensor.buffer].data = source.buffers[weight.buffer].data
            kept.setdefault(layer, []).append((out, flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), kept


def _layer_errors(debugger) -> tuple[dict, dict]:
    """``(RMSE against float in quantization steps, op name)`` per quantized tensor of a debugger
    that ran."""
    import csv
    import io

    text = io.StringIO()
    debugger.layer_statistics_dump(text)
    errors, ops = {}, {}
    for row in csv.DictReader(io.StringIO(text.getvalue())):
        scale = float(row.get("scale") or 0)
        error = float(row["mean_squared_error"])
        if scale > 0 and not np.isnan(error):
            errors[row["tensor_name"]] = float(np.sqrt(error)) / scale
            ops[row["tensor_name"]] = row["op_name"]
    return errors, ops


def _agreement(blob: bytes, samples: list, names: list, reference: np.ndarray) -> float:
    """Top-1 (per-pixel) agreement of TFLite model ``blob`` with ``reference`` on the first samples."""
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    inputs = {d["name"].split(":")[0].split("serving_default_")[-1]: d for d in interpreter.get_input_details()}
    outputs = [o for o in interpreter.get_output_details()
               if tuple(o["shape"][1:]) == reference.shape[1:] and o["dtype"] == np.float32]
    try:  # by name where the signature names them (detection's boxes can have the class scores' shape)
        named = interpreter.get_signature_runner().get_output_details()
        outputs = [named[k] for k in ("probabilities", "scores") if k in named][:1] or outputs
    except (ValueError, KeyError):
        pass
    same = []
    for sample, ref in zip(samples, reference):
        for name in names:
            d = inputs.get(name) or next(iter(inputs.values()))
            interpreter.set_tensor(d["index"], np.asarray(sample[name], d["dtype"]))
        interpreter.invoke()
        got = interpreter.get_tensor(outputs[0]["index"])[0]
        same.append(np.mean(got.argmax(-1) == ref.argmax(-1)))
    return round(float(np.mean(same)), 4)


def _short(tensor: str) -> str:
    """The TFLite tensor ``tensor`` without the outer models' scopes: the Keras layer path and
    the op (``backbone_1/transformer_encoder_layer_0_1/self_attention_layer_1/einsum/Einsum2``);
    the parts of a fused name joined by ``+``."""
    names = []
    for part in tensor.split(";"):
        pieces = part.split("/")
        while len(pieces) > 2 and re.fullmatch(r"(exported_fixed|functional|model|sequential)(_\d+)*", pieces[0]):
            pieces = pieces[1:]
        name = "/".join(pieces)
        if name not in names:
            names.append(name)
    return "+".join(names)


def check_options(quantize: str, check: int, max_drop: float, calibration_examples: int, qat: int) -> None:
    """One clear error for a value out of range, before anything is loaded or written."""
    if check < 0:
        raise RunError(f"--check must be 0 (no check) or a number of validation examples, got {check}.")
    if not 0 <= max_drop < 1:
        raise RunError(f"--max-drop is a metric difference between 0 and 1 (0.01: one point), got {max_drop}.")
    if calibration_examples < 1:
        raise RunError(f"--calibration-examples must be at least 1, got {calibration_examples}.")
    if qat < 0:
        raise RunError(f"--qat takes a number of epochs (1 or more), got {qat}.")
    if qat and quantize != "int8":
        raise RunError(f"--qat applies to --quantize int8, not {quantize}; leave out --qat.")
    refuse_qat(qat)


def validation_examples(task, n: int):
    """Up to ``n`` examples of the run's validation split (class-balanced), split exactly as the
    run split its data; the run's test data where the run had no validation examples."""
    _, val, classes, _ = task.split_items()
    if len(val) == 0 and task.recipe.data.test:
        val, classes = task.read_split(task.recipe.data.test, classes)
        return _sample(task, val, classes, n, seed=0), "test"
    return _sample(task, val, classes, n, seed=0), "validation"


def check_export(exported, task, model, n: int, max_drop: float) -> dict:
    """The export ``exported`` (an :class:`tlmulti.export.ExportedModel`) against the run's
    ``model`` on up to ``n`` validation examples: the task's metric of both
    (:meth:`~tlmulti.tasks.exporting.TaskExport.export_check_scores`), the drop, their agreement,
    the file size and the median single-example latency of the exported file."""
    info = exported.info
    if task.export_unmeasured:
        return {"skipped": task.export_unmeasured}
    examples, split = validation_examples(task, n)
    if not len(examples) or examples.y is None:
        return {"skipped": "the run has no labelled validation or test examples to measure on"}
    x, keras_x = task.check_inputs(examples.x, info, model)
    measured = task.export_check_scores(model, exported.predict, x, keras_x, examples)
    name, run_value, value = measured.pop("metric"), measured.pop("run"), measured.pop("export")
    one = rows(x, 0, 1)
    exported.predict(one)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        exported.predict(one)
        times.append(time.perf_counter() - t0)
    result = {"split": split, "examples": len(examples), "metric": name, "run": round(run_value, 6),
              "export": round(value, 6), "drop": round(run_value - value, 6), "max_drop": max_drop,
              "agreement": round(float(measured.pop("agreement")), 6)}
    result.update({k: v for k, v in measured.items() if v is not None})
    result.update(file_mb=round(info["file_bytes"] / 1e6, 3), latency_ms=round(statistics.median(times) * 1000, 3))
    if result["drop"] > max_drop:
        record = info.get(info["quantize"]) if isinstance(info.get(info["quantize"]), dict) else {}
        kept = ", ".join(g["layers"] for g in record.get("float_groups") or [])
        result["warning"] = (f"the {info['quantize'] if info['quantize'] != 'none' else 'float'} export loses "
                             f"{result['drop']:.4f} {name} against the run ({value:.4f} against {run_value:.4f} on "
                             f"{len(examples)} {split} examples), more than --max-drop {max_drop}: "
                             f"{FIXES[info['quantize']]}" + (f" ({kept} already kept in float)." if kept else "."))
    return result


def summary(check: dict | None) -> str:
    """The check in one line, for the export command."""
    if not check:
        return "not measured (--check 0)"
    if "skipped" in check:
        return f"not measured ({check['skipped']})"
    return (f"{check['metric']} {check['export']:.4f} against the run's {check['run']:.4f} (drop {check['drop']:+.4f}) "
            f"on {check['examples']} {check['split']} examples, {check.get('agreement_of', 'top-1')} agreement "
            f"{check['agreement']:.4f}, "
            f"{check['file_mb']:.1f} MB, {check['latency_ms']:.1f} ms/example")
