"""TF-Hub handles and local TF2 SavedModels as Keras 3 layers.

Why this exists: ``tensorflow_hub.KerasLayer`` is built on ``tf_keras`` (Keras 2) and cannot be
placed in a Keras 3 model.  :class:`HubLayer` is a Keras 3 layer that loads a TF-Hub handle (or a
local TF2 SavedModel directory) with ``tensorflow_hub.resolve`` + ``tf.saved_model.load`` and calls
its ``__call__`` (or a named signature) on the TensorFlow backend, eagerly and inside ``model.fit``.

Keras 3 only tracks ``keras.Variable`` objects, so the SavedModel's own TF variables are wrapped,
not copied: each ``tf.Variable`` becomes the storage (``_value``) of a ``keras.Variable``.  The
wrapper and the SavedModel therefore share one variable: the optimizer updates exactly what the
SavedModel's functions read, freezing (``trainable=False``) moves them to
``non_trainable_weights``, and weights saved in a ``.keras`` file are assigned straight back into
the SavedModel on load.  Variables the
SavedModel does not list as trainable (e.g. batch-norm statistics) are never trainable.

Example (runs offline; any TF2 SavedModel directory or TF-Hub URL works as the handle)::

    import tempfile, numpy as np, tensorflow as tf
    from tlmulti.backbones.tfhub import build_tfhub_backbone

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.ones((3, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.kernel)

    path = tempfile.mkdtemp()
    tf.saved_model.save(Tiny(), path)
    backbone = build_tfhub_backbone(path, input_shape=(3,), trainable=True)
    print(backbone(np.ones((1, 3), "float32")))     # [[3. 3.]]
    print([w.name for w in backbone.get_layer("hub").trainable_weights])  # ['kernel']

A model holding a :class:`HubLayer` saves and loads with ``model.save("m.keras")`` and
``keras.saving.load_model`` (import this module first so the layer class is registered).  The
``.keras`` file holds the config and the weight values, not the SavedModel's graph: the handle must
still resolve on the loading machine.  Offline, a URL handle only resolves if it is already in
the TF-Hub cache (``TFHUB_CACHE_DIR``); otherwise :class:`tlmulti.errors.MissingWeightsError`
says how to get it there.  The handle is resolved once
(:func:`tlmulti.backbones._saved_model.resolve_handle`); a layer loaded from a file, or built
within :func:`~tlmulti.backbones._saved_model.checking_saved_models`, passes
:func:`~tlmulti.backbones._saved_model.check_trusted` on that location before it is loaded.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings

import keras
import tensorflow as tf

from tlmulti.backbones._saved_model import (
    check_trusted,
    checking_saved_models,
    first_line,
    must_check,
    open_saved_model,
    resolve_handle,
)
from tlmulti.errors import RecipeError
from tlmulti.integrity import tree_sha256

__all__ = ["HubLayer", "PerExampleHub"]

def _saved_variables(module):
    """Returns ``[(tf.Variable, listed_as_trainable)]`` for the loaded SavedModel, deduplicated.

    Reusable SavedModels (the TF-Hub convention) list ``variables`` and ``trainable_variables``;
    other SavedModels (e.g. a plain ``tf.Module``) are walked and each variable's saved
    ``trainable`` flag is used.
    """
    listed = getattr(module, "variables", None)
    if listed is not None and not callable(listed):
        listed_trainable = getattr(module, "trainable_variables", None) or ()
        trainable = [v for v in listed_trainable if isinstance(v, tf.Variable)]
        trainable_ids = {id(v) for v in trainable}
        # A variable listed only under trainable_variables still counts.
        variables = [v for v in listed if isinstance(v, tf.Variable)] + trainable
    else:
        view = tf.train.TrackableView(module)
        variables = [t for t in view.descendants() if isinstance(t, tf.Variable)]
        trainable_ids = {id(v) for v in variables if v.trainable}
    seen, result = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            result.append((v, id(v) in trainable_ids))
    return result


def _keras_name(tf_name, index):
    name = re.sub(r":\d+$", "", tf_name or "")
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("_")
    return name or f"variable_{index}"


def _wrap_variable(tf_variable, trainable, name):
    """A ``keras.Variable`` whose storage IS ``tf_variable`` (no copy, always in sync)."""
    kv = keras.Variable(
        initializer=tf_variable, trainable=trainable, autocast=False, name=name
    )
    if kv._value is not tf_variable:  # pragma: no cover - guards against Keras internals changing
        kv._value = tf_variable
    return kv


def _training_values(fn):
    """Which Python ``training`` values the saved function was traced for.

    Returns ``None`` when it takes no ``training`` argument, ``"tensor"`` when ``training`` was
    traced as a tensor, else a set of booleans (both when they cannot be determined).
    """
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    if "training" not in params:
        return None
    position = params.index("training")
    values = set()
    for concrete in getattr(fn, "concrete_functions", None) or ():
        try:
            args, kwargs = concrete.structured_input_signature
        except Exception:
            continue
        if "training" in kwargs:
            value = kwargs["training"]
        elif position < len(args):
            value = args[position]
        else:
            continue
        if isinstance(value, bool):
            values.add(value)
        elif isinstance(value, tf.TensorSpec):
            return "tensor"
    return values or {True, False}


@keras.saving.register_keras_serializable(package="tlmulti")
class HubLayer(keras.layers.Layer):
    """Calls a TF-Hub handle or local TF2 SavedModel, with its variables tracked by Keras.

    Args:
        handle: TF-Hub URL/handle or local SavedModel directory.
        trainable: Whether the SavedModel's trainable variables are trained (fine-tuning).
        signature: Name of a SavedModel signature to call instead of ``__call__``; its outputs
            are a dict, from which ``output_key`` picks one (a single output is picked anyway).
        output_key: Key of the output to return when the callable returns a dict.
        arguments: Extra keyword arguments passed to the callable on every call.

    ``training`` is passed to the saved ``__call__`` when it accepts it, as
    ``training and layer.trainable`` (a frozen backbone always runs in inference mode, like
    Keras batch normalization), restricted to the values the SavedModel was traced for.
    """

    def __init__(
        self, handle, trainable=False, signature=None, output_key=None, arguments=None, sha256=None, **kwargs
    ):
        # Inputs go to the SavedModel as they are (cast to its input dtype when known), not
        # autocast to the layer's compute dtype (e.g. float16), which the saved graph may reject.
        kwargs.setdefault("autocast", False)
        super().__init__(trainable=bool(trainable), **kwargs)
        self._hub_handle = os.fspath(handle) if isinstance(handle, os.PathLike) else str(handle)
        self._hub_signature = signature
        self._hub_output_key = output_key
        self._hub_arguments_config = dict(arguments or {})

        # One resolution of the handle: the location the trust check decides on is the one loaded.
        location = resolve_handle(self._hub_handle)
        if must_check():  # named by a model file or a run folder's recipe, not by the user
            check_trusted(location, sha256, self._hub_handle)
        module, folder = open_saved_model(location, self._hub_handle)
        self._hub_module = module
        self._hub_sha256 = sha256 or (tree_sha256(folder) if os.path.isdir(folder) else None)
        self._hub_fn, self._hub_signature_inputs = self._select_callable(module)
        self._hub_training = (
            None if self._hub_signature_inputs is not None else _training_values(self._hub_fn)
        )
        self._hub_input_dtype = self._find_input_dtype()

        # Wrap (not copy) every SavedModel variable as a keras.Variable tracked by this layer.
        # Created trainable when the SavedModel lists them as trainable so that they land in
        # the layer's trainable store, which `layer.trainable = ...` freezes and unfreezes;
        # the others land in the non-trainable store and stay frozen.
        wrapped = []
        with keras.name_scope(self.name, caller=self):
            for i, (tf_var, listed_trainable) in enumerate(_saved_variables(module)):
                try:
                    wrapped.append(
                        _wrap_variable(tf_var, listed_trainable, _keras_name(tf_var.name, i))
                    )
                except Exception as exc:  # e.g. a string-typed variable Keras cannot hold
                    warnings.warn(
                        f"HubLayer {self._hub_handle!r}: variable {tf_var.name!r} is not "
                        f"tracked by Keras ({first_line(exc)}); it keeps its SavedModel value.",
                        stacklevel=2,
                    )
        self._hub_variables = wrapped
        # Not `self.trainable = trainable`: Keras' TF-backend __setattr__ skips the property
        # setter when the value is unchanged, which would leave these variables trainable.
        for variable in self._trainable_variables:
            variable.trainable = self.trainable
        self.built = True

    # ------------------------------------------------------------------ loading helpers
    def _select_callable(self, module):
        signatures = getattr(module, "signatures", None) or {}
        name = self._hub_signature
        if name is None:
            if callable(module):
                return module.__call__, None
            if "serving_default" in signatures:
                name = "serving_default"
            else:
                raise RecipeError(
                    f"TF-Hub SavedModel {self._hub_handle!r} is not callable, so pass signature= "
                    f"one of {sorted(signatures) or 'its signatures (it has none)'}."
                )
        if name not in signatures:
            raise RecipeError(
                f"TF-Hub SavedModel {self._hub_handle!r} has no signature {name!r}; available "
                f"signatures: {sorted(signatures) or 'none'}."
            )
        fn = signatures[name]
        _, input_specs = fn.structured_input_signature
        return fn, dict(input_specs)

    def _find_input_dtype(self):
        """The dtype of the single tensor input of the saved function, when there is one."""
        if self._hub_signature_inputs is not None:
            specs = list(self._hub_signature_inputs.values())
        else:
            specs = []
            for concrete in getattr(self._hub_fn, "concrete_functions", None) or ():
                args, _ = concrete.structured_input_signature
                if args:
                    specs.append(args[0])
        dtypes = {s.dtype for s in specs if isinstance(s, tf.TensorSpec)}
        return dtypes.pop() if len(dtypes) == 1 else None

    @property
    def handle(self):
        return self._hub_handle

    # ------------------------------------------------------------------ calling
    def _prepare_inputs(self, inputs):
        if isinstance(inputs, dict):
            return inputs
        inputs = tf.convert_to_tensor(inputs)
        if (
            self._hub_input_dtype is not None
            and inputs.dtype != self._hub_input_dtype
            and (inputs.dtype.is_floating or inputs.dtype.is_integer)
            and (self._hub_input_dtype.is_floating or self._hub_input_dtype.is_integer)
        ):
            inputs = tf.cast(inputs, self._hub_input_dtype)
        return inputs

    def _call_function(self, inputs, training):
        kwargs = dict(self._hub_arguments_config)
        if self._hub_signature_inputs is not None:
            if isinstance(inputs, dict):
                kwargs.update(inputs)
            elif len(self._hub_signature_inputs) == 1:
                kwargs[next(iter(self._hub_signature_inputs))] = inputs
            else:
                raise RecipeError(
                    f"TF-Hub signature {self._hub_signature!r} of {self._hub_handle!r} takes the "
                    f"inputs {sorted(self._hub_signature_inputs)}, so feed the layer a dict with "
                    "those keys."
                )
            return self._hub_fn(**kwargs)
        if self._hub_training is None:
            return self._hub_fn(inputs, **kwargs)
        if self._hub_training == "tensor":
            if tf.is_tensor(training):
                flag = tf.logical_and(tf.cast(training, tf.bool), self.trainable)
            else:
                flag = tf.constant(bool(training) and self.trainable)
            return self._hub_fn(inputs, training=flag, **kwargs)
        if tf.is_tensor(training) and len(self._hub_training) == 2:
            if not self.trainable:
                return self._hub_fn(inputs, training=False, **kwargs)
            return tf.cond(
                tf.cast(training, tf.bool),
                lambda: self._hub_fn(inputs, training=True, **kwargs),
                lambda: self._hub_fn(inputs, training=False, **kwargs),
            )
        flag = bool(training) and self.trainable if not tf.is_tensor(training) else False
        if flag not in self._hub_training:
            flag = next(iter(self._hub_training))
        return self._hub_fn(inputs, training=flag, **kwargs)

    def call(self, inputs, training=None):
        outputs = self._call_function(self._prepare_inputs(inputs), training)
        if isinstance(outputs, dict):
            if self._hub_output_key is not None:
                if self._hub_output_key not in outputs:
                    raise RecipeError(
                        f"TF-Hub model {self._hub_handle!r} has no output "
                        f"{self._hub_output_key!r}; available outputs: {sorted(outputs)}."
                    )
                outputs = outputs[self._hub_output_key]
            elif len(outputs) == 1:
                outputs = next(iter(outputs.values()))
            else:
                outputs = dict(outputs)
        elif self._hub_output_key is not None:
            raise RecipeError(
                f"TF-Hub model {self._hub_handle!r} returns a single tensor, not a dict, so leave "
                f"output_key unset (got {self._hub_output_key!r})."
            )
        self._add_regularization_losses()
        return outputs

    def _add_regularization_losses(self):
        if not self.trainable:
            return
        for loss_fn in getattr(self._hub_module, "regularization_losses", None) or ():
            if callable(loss_fn):
                self.add_loss(loss_fn())

    def compute_output_spec(self, inputs, training=None):
        try:
            return super().compute_output_spec(inputs, training=training)
        except Exception:
            # Some SavedModels were traced for a fixed batch size: infer with a batch of 1.
            shape = getattr(inputs, "shape", None)
            if not shape or shape[0] is not None:
                raise
            dummy = keras.KerasTensor((1,) + tuple(shape[1:]), dtype=inputs.dtype)
            spec = super().compute_output_spec(dummy, training=training)
            return keras.tree.map_structure(
                lambda s: keras.KerasTensor((shape[0],) + tuple(s.shape[1:]), dtype=s.dtype)
                if len(s.shape)
                else s,
                spec,
            )

    # ------------------------------------------------------------------ serialization
    @classmethod
    def from_config(cls, config):
        with checking_saved_models():  # a model file names this SavedModel: check_trusted decides
            return cls(**config)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "handle": self._hub_handle,
                "sha256": self._hub_sha256,
                "signature": self._hub_signature,
                "output_key": self._hub_output_key,
                "arguments": dict(self._hub_arguments_config),
                "trainable": self.trainable,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class PerExampleHub(HubLayer):
    """A :class:`HubLayer` for SavedModels that take one unbatched input.

    YAMNet's ``__call__`` takes a single 1-D waveform and returns ``(scores, embeddings,
    log_mel_spectrogram)``; this layer maps it over the batch and keeps output ``output_index``
    (1: the per-frame 1024-d embeddings), giving ``(batch, frames, dim)``. Variables, freezing
    and saving are HubLayer's.
    """

    def __init__(self, handle, output_index=None, **kwargs):
        super().__init__(handle, **kwargs)
        self.output_index = output_index

    def call(self, inputs, training=None):
        import tensorflow as tf

        def one(example):
            out = HubLayer.call(self, example, training=training)
            if isinstance(out, (list, tuple)):
                out = out[self.output_index or 0]
            elif isinstance(out, dict) and self.output_index is not None:
                out = list(out.values())[self.output_index]
            return tf.cast(out, "float32")

        return tf.map_fn(one, tf.convert_to_tensor(inputs), fn_output_signature=tf.float32)

    def get_config(self):
        config = super().get_config()
        config["output_index"] = self.output_index
        return config
