"""Fine-tuning on a cached cut: the frozen part below the unfrozen groups is computed once.

In a phase that unfreezes only the top groups of a backbone (``unfreeze: top:3``), everything
below the lowest unfrozen group stays as it was for the whole phase, yet end-to-end training runs
it forward at every step. With ``cache_features: auto`` (or ``true``), for a task that allows it
(``Task.cut_cache``: image classification) and a backbone that is a Keras functional graph, the
phase instead:

* finds the *cut*: the tensors that cross from the frozen layers into the unfrozen groups (every
  layer fed, directly or not, by an unfrozen layer counts as above the cut);
* computes the output of the part below it once per example, in inference mode (its BatchNorm
  statistics never move, its dropout is off), through the disk feature cache of
  :mod:`tlmulti.data.cache` (memory-mapped, reused by later runs; the key covers the cut point);
* trains an *upper* model, from the cut tensor to the head's output, built from the very layer
  objects of the backbone and head: it shares their variables, so the saved whole model,
  checkpoints (:mod:`tlmulti.training.checkpoints`) and resume are the same as end to end.

A random flip (``data.augment.flip``) is cached too: the training cut holds every view of each
example (the image and its horizontal flip: 2 views; ``flip: both``: the image, its horizontal,
vertical and double flips, 4), and each epoch reads one view of each example, drawn uniformly
with a seed of the epoch and the example (:class:`tlmulti.data.pipeline.Views`), which is what
``RandomFlip`` draws; validation reads the image as it is. The record says how many ``views``.

The phase trains end to end instead, with the reason in the phase record (``cut_cache: {"used":
false, "reason": ...}``), when: ``cache_features: false``; the phase would apply random input
augmentation other than flips (rotate, zoom, translate, contrast, brightness) and
``cache_features`` is ``auto`` (a cached cut cannot augment its inputs; ``cache_features: true``
caches anyway, the flips as views and without the rest); the task does not
allow it; the backbone is not a functional graph with one input and one output (subclassed
models, keras-hub text backbones); more than one tensor crosses the cut; nothing is frozen below
the lowest unfrozen group; or the cache does not fit on the disk (one printed line says so).
"""

from __future__ import annotations

from tlmulti.data import cache as disk
from tlmulti.training.features import DoesNotFit, frozen_features


class Cut:
    """A planned cut of ``parts``: ``lower`` (the backbone from its input to the cut tensor),
    ``upper`` (the backbone from the cut tensor to its output), ``layers`` (names of the layers
    whose output is cut), ``point`` (what identifies the cut in the cache key) and ``flips``
    (the ``(vertical, horizontal)`` flips of the training views, the first one none)."""

    def __init__(self, parts, tensor, layers: list[str], point: list, flips=((False, False),)):
        import keras

        self.parts, self.tensor, self.layers, self.point = parts, tensor, layers, point
        self.flips = [tuple(f) for f in flips]
        self.must_fit = True  # False: an entry that does not fit on the disk is kept in memory
        backbone = parts.backbone
        self.lower = keras.Model(backbone.inputs[0], tensor, name="below_cut")
        self.upper = keras.Model(tensor, backbone.outputs[0], name="above_cut")

    def feature_model(self):
        """Raw inputs to the cut tensor, preprocessing included, in inference mode."""
        import keras

        parts = self.parts
        x = parts.preprocess(parts.inputs) if parts.preprocess is not None else parts.inputs
        return keras.Model(parts.inputs, self.lower(x, training=False), name="cut_features")

    def train_model(self):
        """The cut tensor to the head's output: the unfrozen groups (and whatever lies above them)
        and the head, with the training flag let through as in end-to-end fine-tuning."""
        import keras

        inputs = keras.Input(shape=tuple(self.tensor.shape[1:]), dtype=self.tensor.dtype, name="cut")
        return keras.Model(inputs, self.parts.head(self.upper(inputs)), name="model_above_cut")


def find_cut(backbone, groups: dict, unfrozen: list[str]):
    """``(tensor, producing layer, reason)``: the one tensor that crosses from the frozen layers
    below the unfrozen groups into them, or None and why there is no usable cut."""
    nodes_by_depth = getattr(backbone, "_nodes_by_depth", None)
    if not nodes_by_depth or not hasattr(backbone, "inputs"):
        return None, None, "the backbone is not a Keras functional graph"
    if len(backbone.inputs) != 1 or len(backbone.outputs) != 1:
        return None, None, (f"the backbone has {len(backbone.inputs)} inputs and {len(backbone.outputs)} outputs "
                            "(a cut is cached for one input and one output)")
    upper = {id(layer) for g in unfrozen for layer in groups[g]}
    for depth in sorted(nodes_by_depth, reverse=True):  # the deepest nodes are nearest the inputs
        for node in nodes_by_depth[depth]:
            if any(id(t._keras_history.operation) in upper for t in node.input_tensors):
                upper.add(id(node.operation))
    crossing = {}
    for nodes in nodes_by_depth.values():
        for node in nodes:
            if id(node.operation) not in upper:
                continue
            for t in node.input_tensors:
                if id(t._keras_history.operation) not in upper:
                    crossing[id(t)] = t
    output = backbone.outputs[0]
    if id(output._keras_history.operation) not in upper:
        return None, None, "the backbone's output does not depend on the unfrozen groups"
    if len(crossing) != 1:
        names = sorted({t._keras_history.operation.name for t in crossing.values()})
        return None, None, (f"{len(crossing)} tensors cross from the frozen layers into the unfrozen groups "
                            f"(from {', '.join(names)}); a cut is cached for one")
    tensor = next(iter(crossing.values()))
    layer = tensor._keras_history.operation
    if any(tensor is t for t in backbone.inputs):
        return None, None, "nothing is frozen below the lowest unfrozen group"
    return tensor, layer, None


def flip_views(augment) -> tuple[list, bool]:
    """``(flips, others)``: the ``(vertical, horizontal)`` flips the ``RandomFlip`` layer of
    ``augment`` (a layer or a ``keras.Sequential`` of them, or None) draws from uniformly, no flip
    first (only that one without such a layer), and whether ``augment`` does anything else."""
    import keras

    layers = [] if augment is None else list(getattr(augment, "layers", [augment]))
    flipping = [l for l in layers if isinstance(l, keras.layers.RandomFlip)]
    if len(flipping) != 1:
        return [(False, False)], bool(layers)
    mode = flipping[0].mode
    vertical = [False, True] if "vertical" in mode else [False]
    horizontal = [False, True] if "horizontal" in mode else [False]
    return [(v, h) for v in vertical for h in horizontal], len(layers) > 1


def plan(parts, task, phase, unfrozen: list[str], resumed: bool | None = None):
    """``(Cut or None, record)`` for a phase that unfreezes ``unfrozen``; the record is the phase's
    ``cut_cache`` entry (``used`` False with the ``reason`` when it trains end to end).

    ``resumed``: whether the interrupted epochs of this phase trained on the cut (None: the phase
    starts afresh). A resumed phase continues as it ran, so its optimizer state and best weights
    fit the model: end to end again, or on the cut, kept in memory if the disk lacks room now."""
    if resumed is False:
        return None, {"used": False, "reason": "the interrupted phase trained end to end: it continues so"}
    if phase.cache_features is False:
        return None, {"used": False, "reason": "cache_features: false"}
    if not getattr(task, "cut_cache", False):
        return None, {"used": False, "reason": f"{task.name} trains end to end (no cut cache for this task)"}
    flips, others = flip_views(parts.augment)
    if phase.cache_features == "auto" and (others or parts.augment_pairs is not None) and not resumed:
        return None, {"used": False, "reason": "random input augmentation other than flips is on (data.augment): a "
                                               "cached cut would skip it; cache_features: true caches anyway, "
                                               "the flips as views and without the rest"}
    tensor, layer, reason = find_cut(parts.backbone, parts.groups, unfrozen)
    if tensor is None:
        return None, {"used": False, "reason": reason}
    index = [id(l) for l in parts.backbone.layers].index(id(layer))
    point = [{"index": index, "class": type(layer).__name__, "tensor": tensor._keras_history.tensor_index,
              "shape": list(tensor.shape[1:])}]
    cut = Cut(parts, tensor, [layer.name], point, flips)
    cut.must_fit = not resumed
    return cut, {"used": True, "cut_after": [layer.name], "shape": list(tensor.shape[1:]), "views": len(flips)}


def cached_inputs(cut: Cut, example_sets, recipe, phase_name: str, verbose: int, local: bool = False):
    """``(train features, val features, info)`` at the cut, read from the cache or computed once;
    None, after one printed line, when the cache does not fit on the disk. With several flips the
    training features are :class:`~tlmulti.data.pipeline.Views` of one entry (view-major rows)."""
    from tlmulti.data.examples import Examples
    from tlmulti.data.lazy import flipped_views
    from tlmulti.data.pipeline import Views

    train, val = example_sets
    views = len(cut.flips)
    if verbose:
        print(f"Frozen layers below the cut after '{', '.join(cut.layers)}' for phase '{phase_name}': "
              f"{len(train)} training examples" + (f" in {views} views" if views > 1 else "") +
              f" and {len(val)} validation examples", flush=True)
    if views > 1 and len(train):
        train = Examples(flipped_views(train.x, cut.flips), None, [])
    try:
        features, info = frozen_features(cut.feature_model(), (train, val), recipe, verbose, local=local,
                                         key_extra={"cut": cut.point}, must_fit=cut.must_fit)
    except DoesNotFit as exc:
        print(f"The cut cache of phase '{phase_name}' needs {exc.need / 2**30:.1f} GiB and the disk of "
              f"'{disk.root()}' has less free (with 1 GiB to spare): training this phase end to end.", flush=True)
        return None
    if verbose:
        print(f"Cut features ready in {info['seconds']:.1f} s", flush=True)
    return (Views(features[0], views) if views > 1 and len(train) else features[0]), features[1], info


def phase_model(cut, record, parts, example_sets, recipe, phase_name: str, verbose: int, local: bool = False,
                unfrozen: bool = True):
    """``(model, x_train, x_val)`` of a phase without the frozen-phase cache: the model above
    ``cut`` on the cached features when there is a cut and its cache fits, else the end-to-end
    model on the raw inputs (the backbone pinned to inference mode unless ``unfrozen``).
    ``record`` (the phase's ``cut_cache`` entry) gets the cache's seconds, hits and keys, or the
    reason for training end to end."""
    found = cached_inputs(cut, example_sets, recipe, phase_name, verbose, local) if cut is not None else None
    if found is not None:
        x_train, x_val, info = found
        record.update(cache_seconds=round(info["seconds"], 3), cache_hits=info["hits"], cache_keys=info["keys"])
        return cut.train_model(), x_train, x_val
    if cut is not None:
        record.clear()
        record.update(used=False, reason="the cut cache does not fit on the disk")
    train, val = example_sets
    return parts.assemble(backbone_training=None if unfrozen else False, augment=True), train.x, val.x
