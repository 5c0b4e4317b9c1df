"""Source ``local``: a backbone saved on this machine, and saving one by name.

``handle`` (or ``weights``) is a ``.keras`` / ``.h5`` file, a TF2 SavedModel folder, or a
keras-hub / Hugging Face preset folder (:func:`load_file`).

A backbone trained by tlmulti (source-domain pretraining, or the backbone of any run) is saved
to ``$TLMULTI_HOME/backbones/NAME/`` as ``backbone.keras`` plus ``backbone.json`` (its spec: input
contract, layer groups, families). The registry lists it from then on, so recipes use it by name
like any preset.

Example::

    import tlmulti
    tlmulti.save_backbone(model, "my_cnn.source", families=("audio",),
                          input={"sample_rate": 16000}, layer_groups={"stem": ["conv0.*"]})
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tlmulti import paths, registry
from tlmulti.backbones._store import missing
from tlmulti.errors import RegistryError, RunError, TlmultiError


def status(spec) -> tuple[bool, str]:
    return Path(spec.handle).expanduser().exists(), spec.handle


def load(spec, weights, input_shape):
    path = Path(weights or spec.handle).expanduser()
    if not path.exists():
        raise missing(spec, [str(path)])
    return load_file(path, input_shape)


def load_keras_file(path):
    """A ``.keras`` model file, loaded in Keras safe mode with tlmulti's layers registered.

    A file that holds Python code (a ``Lambda`` layer), names a SavedModel tlmulti does not trust
    (see :func:`tlmulti.backbones._saved_model.check_trusted`), or is truncated or damaged is
    refused with one :class:`~tlmulti.errors.RunError` naming the file."""
    import keras

    import tlmulti.layers  # noqa: F401  registers custom layers

    path = Path(path)
    if not path.is_file():
        raise RunError(f"Model file '{path}' does not exist.")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except TlmultiError:
        raise
    except Exception as exc:
        cause = exc
        while cause is not None:
            if isinstance(cause, TlmultiError):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        text = str(exc)
        if "TFSMLayer" in text:
            raise RunError(
                f"Refusing to load '{path}': it contains a TFSMLayer, a wrapper that runs the graph of a foreign "
                "SavedModel on this machine; tlmulti does not load TFSMLayers from model files, not even with --trust. "
                "Use the SavedModel as a backbone instead (source 'local' or 'tfhub', its folder as the handle): "
                "tlmulti wraps it in its own layer, which a run folder loads with --trust."
            ) from None
        if "Lambda" in text or "safe_mode" in text:
            raise RunError(
                f"Refusing to load '{path}': it contains a Lambda layer, i.e. Python code that would run on "
                "this machine; rebuild the model with registered layers (tlmulti never writes Lambda layers)."
            ) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
        raise RunError(f"'{path}' cannot be read as a Keras model ({first}); it may be truncated or damaged.") from None


def load_file(path, input_shape=None):
    """A ``.keras`` file, a TF SavedModel directory, or a keras-hub / Hugging Face preset directory."""

    import tlmulti.layers  # noqa: F401  registers custom layers used by saved backbones

    path = Path(path)
    if path.is_file() and path.suffix in (".keras", ".h5"):
        return load_keras_file(path)
    if path.is_dir() and (path / "saved_model.pb").exists():
        from tlmulti.backbones.tfhub import build_tfhub_backbone

        return build_tfhub_backbone(str(path), input_shape=tuple(input_shape or (None,)))
    if path.is_dir() and ((path / "config.json").exists() or (path / "metadata.json").exists()):
        import keras_hub

        return keras_hub.models.Backbone.from_preset(str(path))
    raise TlmultiError(
        f"'{path}' is not a backbone file: use a .keras file, a SavedModel folder, or a "
        "keras-hub / Hugging Face preset folder."
    )


def save_backbone(model, name: str, families=("vision",), input=None, layer_groups=None,
                  feature_layers=(), output_layer: str = "", description: str = "",
                  overwrite: bool = False) -> str:
    """Write ``model`` and its spec to the backbone store and register it; returns the folder."""
    import tlmulti.layers  # noqa: F401

    folder = paths.backbone_store() / name
    if folder.exists():
        if not overwrite:
            raise RunError(f"A saved backbone named '{name}' already exists in '{folder}'; "
                           "choose another name or pass overwrite.")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save(folder / "backbone.keras")
    spec = {"name": name, "families": list(families), "input": dict(input or {}),
            "layer_groups": {k: list(v) for k, v in (layer_groups or {}).items()},
            "feature_layers": list(feature_layers), "output_layer": output_layer,
            "description": description or f"saved backbone ({', '.join(families)})"}
    (folder / "backbone.json").write_text(json.dumps(spec, indent=2))
    try:
        known = registry.get_backbone(name)
    except RegistryError:
        known = None
    if known is None or known.source != "source_pretrained":  # that source finds the file itself
        registry.register_backbone(source="local", handle=str(folder / "backbone.keras"), replace=True, **spec)
    return str(folder)
