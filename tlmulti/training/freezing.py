"""Freezing and unfreezing backbone layer groups by name, and the BatchNorm policy.

Groups come from the backbone spec (``layer_groups``, ordered bottom to top). A phase names the
groups that train: a list of names, ``top:N``, ``all`` or ``none``.

BatchNorm: with the ``frozen`` policy (the default in every phase) each BatchNorm layer of the
backbone is non-trainable, which in Keras 3 also makes it run in inference mode: its moving mean
and variance and its scale and offset stay as pretrained, even inside unfrozen groups. With
``train`` the BatchNorm layers of unfrozen groups update their statistics on the new data and
train their scale and offset. In a phase where no group trains, the backbone is also called with
``training=False``.
"""

from __future__ import annotations

from tlmulti.errors import RecipeError

BATCHNORM_CLASSES = ("BatchNormalization", "SyncBatchNormalization")


def resolve_unfreeze(unfreeze, group_names: list[str], where: str = "unfreeze") -> list[str]:
    """Group names a phase trains, in bottom-to-top order."""
    if isinstance(unfreeze, str):
        text = unfreeze.strip()
        if text in ("none", ""):
            return []
        if text == "all":
            return list(group_names)
        if text.startswith("top:"):
            try:
                n = int(text[4:])
            except ValueError:
                raise RecipeError(f"Key '{where}' must be 'top:N' with a whole number N, got {unfreeze!r}.") from None
            if not 0 <= n <= len(group_names):
                raise RecipeError(
                    f"Key '{where}' asks for the top {n} groups but the backbone has {len(group_names)} "
                    f"({', '.join(group_names)})."
                )
            return list(group_names[len(group_names) - n:]) if n else []
        unfreeze = [unfreeze]
    unknown = [g for g in unfreeze if g not in group_names]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], group_names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RecipeError(
            f"Key '{where}' names unknown layer group '{unknown[0]}'.{hint} "
            f"Groups of this backbone: {', '.join(group_names)}."
        )
    return [g for g in group_names if g in unfreeze]


def is_batchnorm(layer) -> bool:
    return layer.__class__.__name__ in BATCHNORM_CLASSES


def all_sublayers(layer):
    yield layer
    for sub in getattr(layer, "_layers", []) or []:
        yield from all_sublayers(sub)


def set_trainable(backbone, groups: dict[str, list], unfrozen: list[str], batchnorm: str = "frozen") -> None:
    """Make exactly the layers of ``unfrozen`` groups trainable (BatchNorm per policy)."""
    backbone.trainable = True
    train_ids = {id(l) for g in unfrozen for l in groups[g]}
    for layer in backbone.layers:
        layer.trainable = id(layer) in train_ids
    if batchnorm == "frozen":
        for layer in all_sublayers(backbone):
            if is_batchnorm(layer):
                layer.trainable = False
    if not unfrozen:
        backbone.trainable = False


def group_multipliers(groups: dict[str, list], unfrozen: list[str], lr_decay: float = 1.0,
                      group_lr: dict[str, float] | None = None) -> dict[str, float]:
    """Learning-rate multiplier per unfrozen group: ``group_lr`` if given, else ``lr_decay ** k``
    for the k-th group below the top unfrozen one."""
    group_lr = group_lr or {}
    unknown = [g for g in group_lr if g not in groups]
    if unknown:
        raise RecipeError(f"Key 'group_lr' names unknown layer group '{unknown[0]}'; groups: {', '.join(groups)}.")
    out = {}
    for k, name in enumerate(reversed(unfrozen)):
        out[name] = float(group_lr.get(name, lr_decay ** k))
    return out
