"""What random augmentation a model's input layers draw: which flips a ``RandomFlip`` draws from,
and which preprocessing layers draw random numbers while training. A phase on the cached cut
(:mod:`tlmulti.training.cut`) caches the flips as views and must know of anything else."""

from __future__ import annotations


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


def random_preprocessing(preprocess) -> list[str]:
    """Names of the layers inside ``preprocess`` (a layer, a ``keras.Sequential`` or None) that
    draw random numbers while training (SpecAugment after the log-mel of speech), dropout aside."""
    import keras

    if preprocess is None:
        return []
    found = []
    for layer in preprocess._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            continue
        if any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values()):
            found.append(layer.name)
    return found
