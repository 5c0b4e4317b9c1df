"""Exports against the run's own model: SavedModel, TFLite and ONNX, and quantized TFLite.

For each finished run given (one per task: image classification, segmentation, text, speech) and
each format: max |exported - model.keras| over the same test inputs (probabilities), top-1 (or
per-pixel class) agreement, file size, and the median single-example latency on CPU next to the
run's Keras model (called through ``tf.function``) in the same process. For TFLite float16 / dynamic / int8: the test-set score
(accuracy, or mean Dice for segmentation) against fp32 TFLite on the same examples, and the top-1
(per-pixel) agreement with fp32 TFLite there. Every row also
carries the export's own check (``export.json``): the metric of the run and of the export on up to
``--check`` examples of the run's validation split, the drop, and top-1 agreement.

    python benchmarks/export_parity.py RUN_DIR [RUN_DIR ...] [--n 128] [--n-test 1000] [--check 300]
        [--tflite-only] [--json ROWS.json] [--keep EXPORTS_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _test_examples(task, recipe, n: int):
    """The run's test examples (its validation examples where it has no test data)."""
    if not recipe.data.test:
        from tlmulti.export_quality import validation_examples

        return validation_examples(task, n)[0]
    if recipe.task == "segmentation":
        items, classes = task.read_split(recipe.data.test, task.classes)
        return task.to_examples(items, classes)
    return task.read(recipe.data.test, classes=task.classes)


def _as_export_input(x, info, model):
    """The export's input form of raw inputs ``x`` (token ids for text TFLite/ONNX, fixed size for TFLite)."""
    if info["task"] == "text_classification" and info["format"] != "saved_model":
        tokens = model.get_layer("tokenizer")(np.asarray(x, dtype=object))
        return {k: np.asarray(v, np.int32) for k, v in tokens.items()}
    if "image" in info["input"] and info["format"] == "tflite":
        import tensorflow as tf

        h, w = info["input"]["image"]["shape"][1:3]
        return tf.image.resize(np.asarray(x, np.float32), (h, w)).numpy()
    if info["task"] == "text_classification":
        return np.asarray(x, dtype=object)
    return np.asarray(x, np.float32)


def _probs(out):
    return out["probabilities"] if isinstance(out, dict) else out


def _score(task_name, probs, y, classes):
    pred = probs.argmax(-1)
    if task_name != "segmentation":
        return float((pred == np.asarray(y)).mean())
    y = np.asarray(y)
    if y.ndim == probs.ndim:  # one-hot masks
        y = y.argmax(-1)
    dice = []
    for c in range(1, len(classes)):
        inter, total = ((pred == c) & (y == c)).sum(), (pred == c).sum() + (y == c).sum()
        if total:
            dice.append(2 * inter / total)
    return float(np.mean(dice))


def _first(x, n):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _latency(fn, x, repeats: int = 30) -> float:
    one = _first(x, 1)
    fn(one)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(one)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_run(run_dir: Path, n: int, n_test: int, out_root: Path, check: int = 300,
              tflite_only: bool = False) -> list[dict]:
    import tensorflow as tf

    import tlmulti
    from tlmulti.export import ExportedModel, export_run
    from tlmulti.runs import load_run

    recipe, task, _ = load_run(run_dir)
    model = tlmulti.load_model(run_dir)
    examples = _test_examples(task, recipe, max(n, n_test))
    rng = np.random.default_rng(0)
    idx = np.sort(rng.permutation(len(examples))[: max(n, n_test)])
    examples = examples.subset(idx)
    x_all, y_all = examples.x, examples.y
    x = _first(x_all, n)
    keras_in = np.asarray(x, dtype=object) if recipe.task == "text_classification" else np.asarray(x, np.float32)
    reference = model.predict(keras_in, verbose=0)
    serve = tf.function(lambda v: model(v, training=False))  # compiled, as a served Keras model runs
    keras_ms = _latency(lambda v: serve(tf.constant(v)), keras_in)
    print(f"\n{run_dir.name} ({recipe.task}, {recipe.backbone.name}): {len(x)} inputs for parity, "
          f"{len(x_all)} test examples for quantized scores; model.keras {keras_ms:.1f} ms/example")
    rows = []
    fp32_tflite_score = fp32_tflite_probs = None
    formats = [("saved_model", "none"), ("onnx", "none"), ("tflite", "none"),
               ("tflite", "float16"), ("tflite", "dynamic"), ("tflite", "int8")]
    for fmt, quantize in formats[2:] if tflite_only else formats:
        if quantize == "int8" and recipe.task == "text_classification":
            continue  # token inputs have no representative float range; export refuses it with a message
        folder = out_root / f"{run_dir.name}_{fmt}_{quantize}"
        t0 = time.perf_counter()
        export_run(run_dir, fmt, folder, quantize=quantize, check=check)
        export_s = time.perf_counter() - t0
        exported = ExportedModel(folder)
        info = exported.info
        got = _probs(exported.predict(_as_export_input(x, info, model)))
        row = {"run": run_dir.name, "task": recipe.task, "format": fmt, "quantize": quantize,
               "max_abs_diff": float(np.abs(got - reference).max()),
               "agreement": float((got.argmax(-1) == reference.argmax(-1)).mean()),
               "mb": info["file_bytes"] / 1e6, "export_s": export_s,
               "latency_ms": _latency(exported.predict, _as_export_input(x, info, model)),
               "keras_latency_ms": keras_ms}
        own = info.get("check") or {}
        if "drop" in own:
            row.update({"val_metric": own["metric"], "val_run": own["run"], "val_export": own["export"],
                        "val_drop": own["drop"], "val_agreement": own["agreement"], "val_examples": own["examples"],
                        "float_layers": (info.get(quantize) or {}).get("float_layers")})
        if fmt == "tflite":
            probs = _probs(exported.predict(_as_export_input(x_all, info, model)))
            row["score"] = _score(recipe.task, probs, y_all, task.classes)
            if quantize == "none":
                fp32_tflite_score, fp32_tflite_probs = row["score"], probs
            row["score_vs_fp32"] = row["score"] - fp32_tflite_score
            row["test_agreement"] = float(np.mean(probs.argmax(-1) == fp32_tflite_probs.argmax(-1)))
        rows.append(row)
        print(f"  {fmt:11s} {quantize:8s} max|diff| {row['max_abs_diff']:.2e}  agreement {row['agreement']:.4f}  "
              f"{row['mb']:7.2f} MB  {row['latency_ms']:7.1f} ms ({row['latency_ms'] / keras_ms:.2f}x keras)"
              + (f"  score {row['score']:.4f} ({row['score_vs_fp32']:+.4f} vs fp32, top-1 agreement with fp32 "
                 f"{row['test_agreement']:.4f})" if "score" in row else "")
              + (f"  val {row['val_metric']} run {row['val_run']:.4f} export {row['val_export']:.4f} "
                 f"(drop {row['val_drop']:+.4f}, agreement {row['val_agreement']:.4f}, {row['val_examples']} ex)"
                 if "val_drop" in row else ""), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=128, help="test inputs for the parity numbers (default 128)")
    parser.add_argument("--n-test", type=int, default=1000, help="test examples for the quantized scores")
    parser.add_argument("--check", type=int, default=300, help="validation examples of each export's own check")
    parser.add_argument("--tflite-only", action="store_true", help="only the TFLite rows (none, float16, dynamic, int8)")
    parser.add_argument("--json", type=Path, help="write all rows to this file")
    parser.add_argument("--keep", type=Path, help="keep the exports (and their export.json) in this folder")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_dir in args.runs:
            rows += bench_run(run_dir, args.n, args.n_test, args.keep or Path(tmp), args.check, args.tflite_only)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
