"""What a task exports, by the kind of input it serves: raw pixels, waveforms or texts.

:func:`tlmulti.export.export_run` asks the task, never its name: :meth:`export_model` gives the
serving model in a format (and the extra files beside it), :meth:`export_signature` the input,
output and preprocessing written into ``export.json``, :meth:`fixed_inputs` the batch-1 inputs
a TFLite model is traced with, :meth:`representative_inputs` the samples int8 calibration
reads and :meth:`onnx_signature` the ONNX input specs. A task mixes in the class of its input
kind and overrides :meth:`export_outputs` (and :meth:`export_model`) when it returns more than
class probabilities, as segmentation does with its class map.

:func:`tlmulti.export_quality.check_export` asks :meth:`TaskExport.check_inputs` for the inputs
of both models and :meth:`TaskExport.export_check_scores` for the measurement: here the class
probabilities of both (:func:`score`); object detection scores boxes instead
(:mod:`tlmulti.tasks.detection_export`).
"""

from __future__ import annotations

import numpy as np

from tlmulti.errors import TlmultiError


class TaskExport:
    """The parts every export shares: the serving model as trained and its probabilities."""

    def export_model(self, serving, fmt: str):
        """``(model, extra files)`` to write in format ``fmt``; files are ``{name: text}``."""
        return serving, {}

    def export_outputs(self) -> dict:
        return {"probabilities": f"float32 (batch, {len(self.classes)}), classes in labels.txt order"}

    def export_inputs(self, serving, fmt: str):
        """``(inputs, preprocessing)`` of the serving model in format ``fmt``."""
        raise TlmultiError(f"Task '{self.name}' does not say what its exported model takes; give it an "
                           "input kind (tlmulti.tasks.exporting: ImageExport, WaveformExport, TextExport).")

    def export_signature(self, serving, fmt: str):
        """``(inputs, outputs, preprocessing)`` for ``export.json``."""
        inputs, prep = self.export_inputs(serving, fmt)
        return inputs, self.export_outputs(), prep

    #: Why the export check does not measure this task's exports (None: it does).
    export_unmeasured: str | None = None

    def export_float_layers(self, serving) -> dict:
        """``{Keras layer name: why}``: the layers of ``serving`` that quantized TFLite exports
        keep in float (int8 cannot represent what they compute); none here."""
        return {}

    def check_inputs(self, x, info: dict, model):
        """``(export input, Keras model input)`` of the raw inputs ``x`` of examples, for the
        export check (``info``: the export's ``export.json``; ``model``: the run's model)."""
        x = np.asarray(x, np.float32)
        return x, x

    def export_check_scores(self, model, predict, x, keras_x, examples) -> dict:
        """The run's ``model`` on ``keras_x`` and the export's ``predict`` on ``x`` (the inputs
        :meth:`check_inputs` gave), scored on ``examples``: ``{"metric", "run", "export",
        "agreement", "max_abs_diff"}``; here the metric of :func:`score` on class probabilities,
        their top-1 (per-pixel; per label at 0.5 for multi-label) agreement and largest difference."""
        ref = probabilities(model.predict(keras_x, batch_size=32, verbose=0))
        got = np.concatenate([probabilities(predict(rows(x, i, i + 32))) for i in range(0, len(ref), 32)])
        name, run_value = score(ref, examples.y, len(self.classes))
        _, value = score(got, examples.y, len(self.classes))
        agree = ((got >= 0.5) == (ref >= 0.5)) if name == "label_accuracy" else got.argmax(-1) == ref.argmax(-1)
        return {"metric": name, "run": run_value, "export": value, "agreement": float(agree.mean()),
                "max_abs_diff": float(np.abs(got - ref).max())}


def rows(x, start: int, stop: int):
    """Rows ``start:stop`` of an input batch (an array, or a dict of arrays for token inputs)."""
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def probabilities(out) -> np.ndarray:
    """The class scores of a model's output: its ``probabilities`` (``scores`` for detection's
    every-anchor outputs), or the output itself."""
    if isinstance(out, dict):
        return np.asarray(out["probabilities"] if "probabilities" in out else out["scores"])
    return np.asarray(out)


def score(probs: np.ndarray, y, n_classes: int) -> tuple[str, float]:
    """``(metric name, value)``: accuracy (top-1), label accuracy at 0.5 (multi-label) or mean
    foreground Dice (segmentation, over the sample's pixels)."""
    y = np.asarray(y)
    if probs.ndim == 4:
        pred = probs.argmax(-1)
        if y.ndim == 4:
            y = y.argmax(-1)
        if y.shape != pred.shape:  # masks at another size than the export's input
            import tensorflow as tf

            y = tf.image.resize(y[..., None], pred.shape[1:3], method="nearest").numpy()[..., 0]
        dice = []
        for c in range(1, n_classes):
            total = (pred == c).sum() + (y == c).sum()
            if total:
                dice.append(2 * ((pred == c) & (y == c)).sum() / total)
        return "mean_dice", float(np.mean(dice)) if dice else float("nan")
    if y.ndim == 2:
        return "label_accuracy", float(((probs >= 0.5) == (y > 0.5)).mean())
    return "accuracy", float((probs.argmax(-1) == y).mean())


class ImageExport(TaskExport):
    """Raw pixels, float32 0..255, ``(batch, H, W, C)``: any size (the model resizes), TFLite at
    the run's network size."""

    def export_inputs(self, serving, fmt: str):
        h, w = self.image_size()
        c = self.channels()
        shape = [1, h, w, c] if fmt == "tflite" else [None, None, None, c]
        inputs = {"image": {"dtype": "float32", "shape": shape, "range": [0, 255],
                            "note": "raw pixels; the model resizes to its network size and normalises"}}
        prep = {"resize_to": [h, w], "channels": c, "normalization": self.spec.input.get("normalization", "unit")}
        return inputs, prep

    def fixed_inputs(self, serving):
        import keras

        h, w = self.image_size()
        return keras.Input((h, w, self.channels()), batch_size=1, name="image")

    def representative_inputs(self, x) -> list[dict]:
        import tensorflow as tf

        h, w = self.image_size()
        x = tf.image.resize(np.asarray(x, np.float32), (h, w)).numpy()
        return [{"image": x[i:i + 1]} for i in range(len(x))]

    def onnx_signature(self, serving):
        import tensorflow as tf

        return (tf.TensorSpec((None, None, None, serving.inputs[0].shape[-1]), tf.float32, name="image"),)

    def check_inputs(self, x, info: dict, model):
        """Pixels, at the network size for TFLite (both models are given the same pixels)."""
        x = np.asarray(x, np.float32)
        if info["format"] == "tflite" and "image" in info["input"]:
            h, w = info["input"]["image"]["shape"][1:3]
            if x.shape[1:3] != (h, w):
                import tensorflow as tf

                x = tf.image.resize(x, (h, w)).numpy()
        return x, x


LOG_MEL_WHY = ("the log-mel front end: its STFT power spectrum spans many decades (Whisper's scale keeps 8, "
               "80 dB) and the log makes the quiet bins count as much as the loud ones, while 8-bit activations "
               "(256 levels per tensor, or per frame where int8 weights quantize their input on the fly) round "
               "the quiet bins to zero; it stays float")


class WaveformExport(TaskExport):
    """Mono waveforms at the run's sample rate and clip length, float32 -1..1, ``(batch, samples)``."""

    def export_inputs(self, serving, fmt: str):
        contract = self.contract()
        inputs = {"waveform": {"dtype": "float32", "shape": [1 if fmt == "tflite" else None, contract.clip_samples],
                               "range": [-1, 1], "sample_rate": contract.sample_rate,
                               "note": "mono, centred in (or cropped to) the clip length"}}
        prep = {"sample_rate": contract.sample_rate, "clip_seconds": contract.clip_seconds,
                "frontend": contract.frontend, "log_mel": contract.frontend_config() if contract.frontend == "log_mel" else None}
        return inputs, prep

    def fixed_inputs(self, serving):
        import keras

        return keras.Input((self.contract().clip_samples,), batch_size=1, name="waveform")

    def export_float_layers(self, serving) -> dict:
        """The log-mel front end (every :class:`~tlmulti.layers.audio.LogMelSpectrogram` inside)."""
        from tlmulti.layers.audio import LogMelSpectrogram

        found, stack = {}, [serving]
        while stack:
            layer = stack.pop()
            if isinstance(layer, LogMelSpectrogram):
                found[layer.name] = LOG_MEL_WHY
            stack.extend(getattr(layer, "layers", []))
        return found

    def representative_inputs(self, x) -> list[dict]:
        return [{"waveform": np.asarray(x[i:i + 1], np.float32)} for i in range(len(x))]

    def onnx_signature(self, serving):
        import tensorflow as tf

        return (tf.TensorSpec((None, serving.inputs[0].shape[-1]), tf.float32, name="waveform"),)


class TextExport(TaskExport):
    """Raw strings in SavedModel (the WordPiece tokenizer is inside). TFLite and ONNX cannot carry
    the tokenizer (its string ops are TensorFlow Text kernels neither runtime has), so those take
    ``token_ids`` / ``padding_mask`` / ``segment_ids`` and the folder holds ``vocab.txt``."""

    def export_model(self, serving, fmt: str):
        if fmt == "saved_model":
            return serving, {}
        model, tokenizer = _token_model(serving)
        return model, {"vocab.txt": "\n".join(tokenizer.vocabulary) + "\n"}

    def export_inputs(self, serving, fmt: str):
        if fmt == "saved_model":
            return ({"text": {"dtype": "string", "shape": [None], "note": "raw text; the tokenizer is inside"}},
                    {"tokenizer": "inside the model"})
        tok = serving.get_layer("tokenizer")
        shape = [1 if fmt == "tflite" else None, tok.sequence_length]
        inputs = {k: {"dtype": "int32", "shape": shape} for k in tok.outputs}
        prep = {"tokenizer": {"vocabulary": "vocab.txt", "lowercase": tok.lowercase, "strip_accents": tok.strip_accents,
                              "sequence_length": tok.sequence_length, "cls": tok.cls_token, "sep": tok.sep_token,
                              "pad": tok.pad_token, "unk": tok.unk_token,
                              "note": "[CLS] word pieces [SEP], padded with [PAD]; padding_mask 1 on tokens"}}
        return inputs, prep

    def fixed_inputs(self, serving):
        import keras

        return {k: keras.Input(tuple(t.shape[1:]), batch_size=1, dtype="int32", name=k)
                for k, t in serving.input.items()}

    def check_inputs(self, x, info: dict, model):
        """Strings for SavedModel and the Keras model; the run tokenizer's token ids for TFLite / ONNX."""
        texts = np.asarray(x, dtype=object)
        if info["format"] == "saved_model":
            return texts, texts
        tokens = model.get_layer("tokenizer")(texts)
        return {k: np.asarray(v, np.int32) for k, v in tokens.items()}, texts

    def representative_inputs(self, x) -> list[dict]:
        raise TlmultiError("int8 quantization of text exports needs token inputs; use --quantize dynamic for text.")

    def onnx_signature(self, serving):
        import tensorflow as tf

        return ({k: tf.TensorSpec((None, t.shape[-1]), tf.int32, name=k) for k, t in serving.input.items()},)


def _token_model(model):
    """The text model from the tokenizer's outputs (token ids) on."""
    import keras

    tokenizer = model.get_layer("tokenizer")
    keys = list(tokenizer.outputs)
    inputs = {k: keras.Input((tokenizer.sequence_length,), dtype="int32", name=k) for k in keys}
    x = inputs
    for layer in model.layers:
        if layer.name in ("tokenizer",) or type(layer).__name__ == "InputLayer" or layer.name.endswith("_removed"):
            continue
        x = layer(x)
    return keras.Model(inputs, x, name="exported_tokens"), tokenizer
