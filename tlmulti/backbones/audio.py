"""Speech backbones: a compact log-mel CNN, its source-pretrained version, Whisper's encoder, YAMNet.

* ``audio_cnn.*``: four conv blocks (Conv2D, BatchNorm, ReLU, 2x2 max-pool) over log-mel
  features ``(frames, n_mels)``, any number of frames. Layer groups ``block1`` .. ``block4``.
* ``audio_cnn.synth_words``: the same network pretrained by ``tlmulti audio pretrain`` on a
  large synthetic source vocabulary. No pretrained speech weights can be installed offline, so
  the first use trains it once (the bundled ``recipes/audio/source_pretrain.yaml`` through the
  shared trainer) and saves it with :func:`tlmulti.save_backbone` under
  ``$TLMULTI_HOME/backbones/<name>``; later uses load that file.
* Whisper (keras-hub presets): :func:`encoder_only` keeps the encoder of a ``WhisperBackbone``,
  a model from log-mel ``encoder_features`` ``(frames, 80)`` to ``(frames / 2, hidden)``.
* YAMNet (TF-Hub): :func:`yamnet_backbone` wraps the handle with
  :class:`tlmulti.layers.audio.PerExampleHub`, since YAMNet takes one unbatched waveform.

Example::

    from tlmulti import registry
    from tlmulti.backbones import load_backbone
    cnn = load_backbone(registry.get_backbone("audio_cnn.scratch"), input_shape=(101, 40))
    print(cnn.output.shape)   # (None, None, 2, 128)
"""

from __future__ import annotations

import sys
from pathlib import Path

from tlmulti import paths
from tlmulti.errors import TlmultiError

DEFAULT_CHANNELS = (16, 32, 64, 128)
SOURCE_RECIPE = "audio/source_pretrain.yaml"


def cnn_groups(blocks: int = len(DEFAULT_CHANNELS)) -> dict[str, list[str]]:
    """Layer groups of the compact CNN, bottom to top."""
    return {f"block{i}": [f"block{i}_.*"] for i in range(1, blocks + 1)}


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


def _n_mels(spec, input_shape) -> int:
    if input_shape and input_shape[-1]:
        return int(input_shape[-1])
    return int(spec.input.get("n_mels", 40))


def build_audio_cnn(spec, weights, input_shape):
    """Builder of ``audio_cnn.scratch``: a fresh network, or a ``.keras`` file given as weights."""
    if weights not in (None, "random"):
        from tlmulti.backbones import load_local

        return load_local(Path(weights), input_shape)
    opts = spec.options
    return audio_cnn(_n_mels(spec, input_shape), opts.get("channels", DEFAULT_CHANNELS),
                     int(opts.get("convs_per_block", 1)))


def source_cnn(spec, weights, input_shape):
    """Builder of a source-pretrained CNN: the saved backbone, pretrained first if it is missing.

    ``weights="random"`` gives the same architecture randomly initialised (the from-scratch
    baseline); a path loads that file instead.
    """
    if weights == "random":
        return build_audio_cnn(spec, None, input_shape)
    if weights is not None:
        return build_audio_cnn(spec, weights, input_shape)
    from tlmulti.backbones import load_local

    path = ensure_pretrained(spec.name, spec.options.get("recipe", SOURCE_RECIPE))
    return load_local(path, input_shape)


def saved_path(name: str) -> Path:
    return paths.backbone_store() / name / "backbone.keras"


def ensure_pretrained(name: str, recipe_file: str = SOURCE_RECIPE, overrides=()) -> Path:
    """The saved backbone ``name``; trains it with the source recipe first when it is not there."""
    path = saved_path(name)
    if path.is_file():
        return path
    from tlmulti.recipe import load_recipe, recipes_dir

    print(f"[tlmulti] Backbone '{name}' is not built on this machine yet: pretraining it once on the "
          f"source recipe {recipe_file} (synthesis and training take a few minutes on a CPU); later runs "
          f"load {path}.", file=sys.stderr, flush=True)
    recipe = load_recipe(recipes_dir() / recipe_file, overrides=overrides)
    out = paths.home() / "pretrain" / name
    if out.exists():
        import shutil

        shutil.rmtree(out)
    pretrain(recipe, name, out=out, overwrite=True)
    return path


def pretrain(recipe, name: str, out=None, overwrite: bool = False, description: str = ""):
    """Train ``recipe`` with the shared trainer and save its backbone as local backbone ``name``.

    Returns ``(run, folder)``: the training run (metrics of the source task) and the saved
    backbone's folder. The backbone keeps the recipe backbone's input contract and layer groups,
    so recipes use it by name like any preset.
    """
    from tlmulti import registry
    from tlmulti.backbones.saved import save_backbone
    from tlmulti.training import train

    if not overwrite and saved_path(name).exists():
        raise TlmultiError(f"A saved backbone named '{name}' already exists in '{saved_path(name).parent}'; "
                           "choose another --name or pass --overwrite.")
    spec = registry.get_backbone(recipe.backbone.name)
    run = train(recipe, out=out)
    backbone = run.model.get_layer("backbone")
    metrics = run.metrics.get("val") or {}
    text = description or (
        f"compact log-mel CNN pretrained on {run.metrics['data']['classes']} source words "
        f"({recipe.data.train}; source val accuracy {metrics.get('accuracy', float('nan')):.3f})"
    )
    folder = save_backbone(backbone, name, families=spec.families, input=dict(spec.input),
                           layer_groups={k: list(v) for k, v in spec.layer_groups.items()},
                           description=text, overwrite=True)
    return run, folder


def encoder_only(model):
    """The encoder of a keras-hub ``WhisperBackbone`` as a model ``encoder_features -> sequence``.

    Other models pass through unchanged. The decoder (and its token inputs) is dropped; the
    encoder's layers and weights are shared with ``model``.
    """
    import keras

    inputs = model.input
    if not (isinstance(inputs, dict) and "encoder_features" in inputs):
        return model
    try:
        out = model.get_layer("encoder_layer_norm").output
    except ValueError:
        raise TlmultiError(f"Backbone '{model.name}' has encoder_features but no encoder_layer_norm layer; "
                           "only keras-hub WhisperBackbone encoders are supported.") from None
    return keras.Model(inputs["encoder_features"], out, name="backbone")


def whisper_groups(num_layers: int) -> dict[str, list[str]]:
    """Layer groups of a Whisper encoder: the conv/position embedding, then one per transformer layer."""
    groups = {"embed": ["encoder_token_embedding_conv_layer_.*", "encoder_padder",
                        "encoder_position_embedding", "encoder_embeddings_.*"]}
    for i in range(num_layers):
        names = [f"transformer_encoder_layer_{i}"]
        if i == num_layers - 1:
            names.append("encoder_layer_norm")
        groups[f"layer{i}"] = names
    return groups


def yamnet_backbone(spec, handle, input_shape):
    """TF-Hub YAMNet (or any model taking one unbatched waveform): ``(batch, samples)`` -> frames."""
    import keras

    from tlmulti.layers.audio import PerExampleHub

    samples = input_shape[-1] if input_shape else None
    inputs = keras.Input(shape=(samples,), name="waveform")
    hub = PerExampleHub(handle, output_index=spec.options.get("output_index", 1), trainable=False, name="hub")
    return keras.Model(inputs, hub(inputs), name="backbone")
