"""Fine-tuning on a cached cut: the frozen part below the unfrozen groups is computed once.

In a phase that unfreezes only the top groups of a backbone (``unfreeze: top:3``), everything
below the lowest unfrozen group stays as it was for the whole phase, yet end-to-end training runs
it forward at every step. With ``cache_features: auto`` (or ``true``), for a task that allows it
(``Task.cut_cache``: image classification, multi-label, segmentation and text classification;
speech classification only with ``cache_features: true``, ``ON_REQUEST``) and a backbone that is a Keras
functional graph, the phase instead:

* finds the *cut*: the tensors that cross from the frozen layers into the unfrozen groups (every
  operation fed, directly or not, by an unfrozen layer counts as above the cut). In a CNN that is
  one tensor, a block's output. In a BERT-family text encoder it is the hidden states of the
  highest frozen layer and the ``padding_mask`` input, which every transformer layer and the
  masked pooling above read (or, when only the ``pooler`` trains, the [CLS] vector alone). In
  Whisper's encoder, which has no mask, it is the hidden states alone. In a segmentation
  encoder (one output per skip layer) it is the input of the lowest unfrozen group plus every
  skip computed below it (and the preprocessed image, when ``head.image_skip`` feeds it to the
  decoder); the upper model passes those skips on to the decoder unchanged;
* computes every cut tensor once per example, in inference mode (BatchNorm statistics below the
  cut never move; dropout below the cut is off, where end-to-end training would apply it in the
  frozen layers too), through the disk feature cache of :mod:`tlmulti.data.cache` (memory-mapped,
  reused by later runs; the key covers the cut point). The entry holds one array per cut tensor:
  floating-point ones in ``cache.dtype``, the others, such as the padding mask, in their own
  dtype. A backbone input that crosses the cut is cached too, not fed from the raw input: the
  padding mask comes out of the tokenizer, which is part of the cached computation;
* trains an *upper* model, from the cut tensors (one model input each) to the head's output,
  built from the very layer objects of the backbone and head: it shares their variables, so the
  saved whole model, checkpoints (:mod:`tlmulti.training.checkpoints`) and resume are the same as
  end to end.

A random flip (``data.augment.flip``) is cached too: the training cut holds every view of each
example (the image and its horizontal flip: 2 views; ``flip: both``: the image, its horizontal,
vertical and double flips, 4), and each epoch reads one view of each example, drawn uniformly
with a seed of the epoch and the example (:class:`tlmulti.data.pipeline.Views`), which is what
``RandomFlip`` draws; validation reads the image as it is. The record says how many ``views``.
Which views there are is the task's to say (``Task.cut_views``): segmentation caches the
distinct flips and quarter turns its paired augmentation draws (``flip: both`` with ``rot90``:
the 8 symmetries of a square tile, 4 for a non-square one), and each view reads its mask turned
alike.

The phase record (``cut_cache``) says ``used``, the operations whose outputs are cut
(``cut_after``: ``["transformer_layer_3", "padding_mask"]`` for MiniLM-L6 with ``top:2``), the
shape of one example of each (``shapes``), ``views`` and the cache's seconds, hits and keys.

The phase trains end to end instead, with the reason in the phase record (``cut_cache: {"used":
false, "reason": ...}``), when: ``cache_features: false``; ``auto`` for a task that caches its cut
only on request; the phase would apply random input augmentation other than the views and
``cache_features`` is ``auto`` (image rotate, zoom, translate, contrast, brightness, a
segmentation tile's brightness and contrast; speech waveform augmentation and SpecAugment, which
the default speech recipe turns on: a cached cut cannot augment its inputs; ``cache_features:
true`` caches anyway, the views as views and without the rest); the task does not allow it; the
backbone is not a functional graph (subclassed models, TF-Hub wrappers); nothing is frozen below
the lowest unfrozen group; a cut tensor does not hold one row per example (speech_embedding runs
its CNN on the windows of every clip as rows of one batch); or the cache does not fit on the disk
(one printed line says so).
"""

from __future__ import annotations

from tlmulti.data import cache as disk
from tlmulti.training.features import DoesNotFit, NotPerExample, frozen_features

#: ``Task.cut_cache`` of a task whose phases train on the cut only with ``cache_features: true``.
ON_REQUEST = "on request"


class Cut:
    """A planned cut of ``parts``: ``tensors`` (the tensors that cross into the unfrozen groups,
    see :func:`find_cut`), ``lower`` (the backbone from its inputs to those tensors), ``upper``
    (from them to its output: the backbone's operations ``above`` the cut, a set of ids, called on
    new inputs), ``layers`` (names of the operations whose output is cut; a backbone input such as
    ``padding_mask`` names itself), ``point`` (what identifies the cut in the cache key),
    ``flips`` (the ``(vertical, horizontal[, quarter_turns])`` transforms of the training views,
    the first one none) and ``paired`` (whether the targets are masks turned with the image)."""

    def __init__(self, parts, tensors: list, layers: list[str], point: list, above: set,
                 flips=((False, False),), paired: bool = False):
        import keras

        self.parts, self.tensors, self.layers, self.point = parts, list(tensors), layers, point
        self.flips, self.paired = [tuple(f) for f in flips], paired
        self.must_fit = True  # False: an entry that does not fit on the disk is kept in memory
        backbone = parts.backbone
        inputs = {id(t) for t in backbone.inputs}  # a backbone input read above the cut is passed on
        outputs = [keras.layers.Identity(name=f"{name}_passed")(t) if id(t) in inputs else t
                   for t, name in zip(self.tensors, layers)]  # (a model cannot output its own input)
        self.lower = keras.Model(backbone.input, _one(outputs), name="below_cut")
        fresh = [keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype) for t in self.tensors]
        self.upper = keras.Model(_one(fresh), _run_above(backbone, above, self.tensors, fresh), name="above_cut")

    def feature_model(self):
        """Raw inputs to the cut tensors, preprocessing included, in inference mode: one output
        per cut tensor."""
        import keras

        parts = self.parts
        x = parts.preprocess(parts.inputs) if parts.preprocess is not None else parts.inputs
        return keras.Model(parts.inputs, self.lower(x, training=False), name="cut_features")

    def shapes(self) -> list[list]:
        """The shape of one example of each cut tensor, as the feature model gives it (a text's
        sequence length is known there, not in the backbone)."""
        return [list(o.shape[1:]) for o in self.feature_model().outputs]

    def train_model(self):
        """The cut tensors to the head's output: the unfrozen groups (and whatever lies above them)
        and the head, with the training flag let through as in end-to-end fine-tuning. One input
        per cut tensor (``cut`` when there is one, else ``cut_<layer>``), in the order of ``layers``."""
        import keras

        names = ["cut"] if len(self.tensors) == 1 else [f"cut_{name}" for name in self.layers]
        inputs = [keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=n) for t, n in zip(self.tensors, names)]
        return keras.Model(_one(inputs), self.parts.head(self.upper(_one(inputs))), name="model_above_cut")


def _one(values: list):
    """A single tensor as itself, several as a list (how Keras models take and give them)."""
    return values[0] if len(values) == 1 else list(values)


def _run_above(backbone, above: set, tensors: list, values: list):
    """The backbone's output computed from ``values`` in place of the cut ``tensors``: each node
    of an operation in ``above`` called again, bottom to top, on what its inputs became. (A
    Keras model whose inputs are the backbone's own tensors clones the graph between them, and
    in doing so rewires a backbone input that crosses the cut, the padding mask: the whole model
    could then no longer be saved.)"""
    import keras

    known = {id(t): v for t, v in zip(tensors, values)}
    given = {id(v) for v in values}
    nodes_by_depth = backbone._nodes_by_depth
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if id(node.operation) not in above or not all(id(t) in known for t in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(known)
            for t, v in zip(node.outputs, keras.tree.flatten(node.operation(*args, **kwargs))):
                known[id(t)] = v
    outputs = [known[id(t)] for t in backbone.outputs]  # a skip output below the cut is a cut tensor:
    outputs = [keras.layers.Identity()(v) if id(v) in given else v for v in outputs]  # passed on
    return _one(outputs)


def above_cut(backbone, groups: dict, unfrozen: list[str]) -> set:
    """Ids of the backbone's operations above the cut: the layers of the ``unfrozen`` groups and
    every operation fed by them, directly or not."""
    upper = {id(layer) for g in unfrozen for layer in groups[g]}
    nodes_by_depth = backbone._nodes_by_depth
    for depth in sorted(nodes_by_depth, reverse=True):  # the deepest nodes are nearest the inputs
        for node in nodes_by_depth[depth]:
            if any(id(t._keras_history.operation) in upper for t in node.input_tensors):
                upper.add(id(node.operation))
    return upper


def find_cut(backbone, groups: dict, unfrozen: list[str]):
    """``(tensors, operations, reason)``: the tensors that cross from the frozen part of the
    backbone into the unfrozen groups (and whatever those feed, :func:`above_cut`), and the
    operations that produce them; or ``(None, None, why there is no usable cut)``. A backbone
    input read above the cut (a transformer's padding mask) is one of them, and so is an output
    of a multi-output backbone computed below the cut (a segmentation encoder's skip features
    at the finer strides). Order: the outputs of frozen operations as the backbone orders its
    operations, then the backbone inputs."""
    nodes_by_depth = getattr(backbone, "_nodes_by_depth", None)
    if not nodes_by_depth or not hasattr(backbone, "inputs"):
        return None, None, "the backbone is not a Keras functional graph"
    upper = above_cut(backbone, groups, unfrozen)
    crossing = {}
    for nodes in nodes_by_depth.values():
        for node in nodes:
            if id(node.operation) not in upper:
                continue
            for t in node.input_tensors:
                if id(t._keras_history.operation) not in upper:
                    crossing[id(t)] = t
    below = [t for t in backbone.outputs if id(t._keras_history.operation) not in upper]
    if len(below) == len(backbone.outputs):
        return None, None, "the backbone's output does not depend on the unfrozen groups"
    crossing.update((id(t), t) for t in below)
    inputs = {id(t) for t in backbone.inputs}
    if all(id(t) in inputs for t in crossing.values()):
        return None, None, "nothing is frozen below the lowest unfrozen group"
    order = {id(op): k for k, op in enumerate(backbone.operations)}
    tensors = sorted(crossing.values(), key=lambda t: (id(t) in inputs, order.get(id(t._keras_history.operation),
                                                                                len(order)),
                                                       t._keras_history.tensor_index))
    return tensors, [t._keras_history.operation for t in tensors], None


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
    allowed = getattr(task, "cut_cache", False)
    if not allowed:
        return None, {"used": False, "reason": f"{task.name} trains end to end (no cut cache for this task)"}
    if allowed == ON_REQUEST and phase.cache_features == "auto" and not resumed:
        return None, {"used": False, "reason": f"{task.name} trains end to end under cache_features: auto (on the "
                                               "measured runs the cut saved no time); cache_features: true trains "
                                               "this phase on the cached cut"}
    flips, others, paired = task.cut_views(parts)
    if phase.cache_features == "auto" and others and not resumed:
        return None, {"used": False, "reason": f"random input augmentation other than {task.cut_view_names} is on "
                                               "(data.augment): a cached cut would skip it; cache_features: true "
                                               f"caches anyway, the {task.cut_view_names} as views and without "
                                               "the rest"}
    tensors, operations, reason = find_cut(parts.backbone, parts.groups, unfrozen)
    if tensors is None:
        return None, {"used": False, "reason": reason}
    index = {id(op): k for k, op in enumerate(parts.backbone.operations)}
    point = [{"index": index[id(op)], "class": type(op).__name__, "tensor": t._keras_history.tensor_index,
              "shape": list(t.shape[1:])} for t, op in zip(tensors, operations)]
    above = above_cut(parts.backbone, parts.groups, unfrozen)
    cut = Cut(parts, tensors, [op.name for op in operations], point, above, flips, paired)
    cut.must_fit = not resumed
    return cut, {"used": True, "cut_after": list(cut.layers), "shapes": cut.shapes(), "views": len(flips)}


class Unusable(Exception):
    """The cut cannot be cached after all; the phase trains end to end (the message says why)."""


def cached_inputs(cut: Cut, example_sets, recipe, phase_name: str, verbose: int, local: bool = False):
    """``(train features, val features, info)`` at the cut, read from the cache or computed once:
    one array per cut tensor (a list of them when there are several). With several flips the
    training features are :class:`~tlmulti.data.pipeline.Views` of one entry (view-major rows).
    Raises :class:`Unusable`, after one printed line, when the cache does not fit on the disk or
    a cut tensor does not hold one row per example (a backbone that folds windows of each example
    into the batch)."""
    from tlmulti.data.examples import Examples
    from tlmulti.data.lazy import flipped_views
    from tlmulti.data.pipeline import Views

    train, val = example_sets
    views = len(cut.flips)
    if verbose:
        print(f"Frozen layers below the cut after '{', '.join(cut.layers)}' for phase '{phase_name}': "
              f"{len(train)} training examples" + (f" in {views} views" if views > 1 else "") +
              f" and {len(val)} validation examples", flush=True)
    targets = None
    if views > 1 and len(train):
        targets = flipped_views(train.y, cut.flips) if cut.paired else None  # each mask turned with its image
        train = Examples(flipped_views(train.x, cut.flips), None, [])
    try:
        features, info = frozen_features(cut.feature_model(), (train, val), recipe, verbose, local=local,
                                         key_extra={"cut": cut.point}, must_fit=cut.must_fit)
    except DoesNotFit as exc:
        print(f"The cut cache of phase '{phase_name}' needs {exc.need / 2**30:.1f} GiB and the disk of "
              f"'{disk.root()}' has less free (with 1 GiB to spare): training this phase end to end.", flush=True)
        raise Unusable("the cut cache does not fit on the disk") from None
    except NotPerExample as exc:
        print(f"The cut of phase '{phase_name}' after '{', '.join(cut.layers)}' is not one row per example "
              f"({exc}): training this phase end to end.", flush=True)
        raise Unusable(f"a tensor at the cut does not hold one row per example ({exc})") from None
    if verbose:
        print(f"Cut features ready in {info['seconds']:.1f} s", flush=True)
    return (Views(features[0], views, targets) if views > 1 and len(train) else features[0]), features[1], info


def phase_model(cut, record, parts, example_sets, recipe, phase_name: str, verbose: int, local: bool = False,
                unfrozen: bool = True):
    """``(model, x_train, x_val)`` of a phase without the frozen-phase cache: the model above
    ``cut`` on the cached features when there is a cut and it can be cached, else the end-to-end
    model on the raw inputs (the backbone pinned to inference mode unless ``unfrozen``).
    ``record`` (the phase's ``cut_cache`` entry) gets the cache's seconds, hits and keys, or the
    reason for training end to end."""
    if cut is not None:
        try:
            x_train, x_val, info = cached_inputs(cut, example_sets, recipe, phase_name, verbose, local)
        except Unusable as exc:
            record.clear()
            record.update(used=False, reason=str(exc))
        else:
            record.update(cache_seconds=round(info["seconds"], 3), cache_hits=info["hits"], cache_keys=info["keys"])
            return cut.train_model(), x_train, x_val
    train, val = example_sets
    return parts.assemble(backbone_training=None if unfrozen else False, augment=True), train.x, val.x
