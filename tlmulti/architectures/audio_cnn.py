"""A compact log-mel CNN for speech: four conv blocks (Conv2D, BatchNorm, ReLU, 2x2 max-pool)
over log-mel features ``(frames, n_mels)``, any number of frames. Layer groups ``block1`` ..
``block4`` (:func:`tlmulti.presets.audio.cnn_groups`).

It is the backbone of ``audio_cnn.scratch`` (random initialisation) and of
``audio_cnn.synth_words`` (the same network pretrained by ``tlmulti audio pretrain`` on a
synthetic source vocabulary).

Example::

    from tlmulti.architectures.audio_cnn import audio_cnn
    cnn = audio_cnn(n_mels=40)
    print(cnn.output.shape)   # (None, None, 3, 128)
"""

from __future__ import annotations

DEFAULT_CHANNELS = (16, 32, 64, 128)


def audio_cnn(n_mels: int, channels=DEFAULT_CHANNELS, convs_per_block: int = 1, name: str = "backbone"):
    """The compact CNN, randomly initialised: ``(batch, frames, n_mels)`` -> feature map."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None, int(n_mels)), name="log_mel")
    x = layers.Reshape((-1, int(n_mels), 1), name="block1_expand")(inputs)
    for b, filters in enumerate(channels, start=1):
        for k in range(convs_per_block):
            suffix = "" if convs_per_block == 1 else f"{k + 1}"
            x = layers.Conv2D(int(filters), 3, padding="same", use_bias=False, name=f"block{b}_conv{suffix}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{suffix}")(x)
            x = layers.ReLU(name=f"block{b}_relu{suffix}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{b}_pool")(x)
    return keras.Model(inputs, x, name=name)


def build_audio_cnn(spec, weights, input_shape):
    """Builder (source ``builder``): the CNN for the spec's ``options`` (``channels``,
    ``convs_per_block``) and the mel bands of ``input_shape`` (or ``input.n_mels``)."""
    n_mels = int(input_shape[-1]) if input_shape and input_shape[-1] else int(spec.input.get("n_mels", 40))
    opts = spec.options
    return audio_cnn(n_mels, opts.get("channels", DEFAULT_CHANNELS), int(opts.get("convs_per_block", 1)))
