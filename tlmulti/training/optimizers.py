"""Optimizers from the recipe, with per-variable learning-rate multipliers.

Discriminative fine-tuning trains lower layer groups at a smaller learning rate than upper ones.
Keras optimizers have one learning rate, so :func:`make_optimizer` subclasses the chosen one and
scales the rate passed to ``update_step`` by a multiplier per variable (1.0 for the head).
"""

from __future__ import annotations

import keras

_CLASSES = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


def _with_multipliers(base):
    class Scaled(base):
        def __init__(self, *args, multipliers=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._by_id = dict(multipliers or {})
            self._scales = []

        def build(self, variables):
            super().build(variables)
            self._scales = [self._by_id.get(id(v), 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            scale = self._scales[self._get_variable_index(variable)] if self._scales else 1.0
            if scale != 1.0:
                learning_rate = learning_rate * scale
            return super().update_step(gradient, variable, learning_rate)

    Scaled.__name__ = f"Scaled{base.__name__}"
    return Scaled


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", steps: int = 0, warmup: float = 0.0):
    """The phase's rate: a number (``constant`` without warmup), or linear warmup over
    ``warmup * steps`` steps then cosine decay to zero over the rest (``cosine``), as fastai's
    ``fit_one_cycle`` and Hugging Face's default scheduler do."""
    warm = int(round(max(0.0, min(warmup, 1.0)) * steps))
    if schedule == "constant" and not warm:
        return learning_rate
    if schedule == "constant":
        return keras.optimizers.schedules.CosineDecay(  # warmup, then (alpha=1) no decay
            0.0, decay_steps=max(steps - warm, 1), alpha=1.0, warmup_target=learning_rate, warmup_steps=warm)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warm else learning_rate, decay_steps=max(steps - warm, 1), alpha=0.0,
        warmup_target=learning_rate if warm else None, warmup_steps=warm)


def make_optimizer(config, learning_rate, multipliers: dict[int, float] | None = None,
                   global_clipnorm: float | None = None):
    """Optimizer named by ``config.name`` at ``learning_rate`` (a number or a schedule);
    ``multipliers`` maps ``id(variable)`` to an LR scale; ``global_clipnorm`` clips the norm of
    all gradients together unless the recipe's ``optimizer.clipnorm`` clips each one."""
    base = _CLASSES[config.name]
    kwargs = {"learning_rate": learning_rate}
    if config.clipnorm:
        kwargs["clipnorm"] = config.clipnorm
    elif global_clipnorm:
        kwargs["global_clipnorm"] = global_clipnorm
    if config.name == "adamw":
        kwargs["weight_decay"] = config.weight_decay or 0.004
    elif config.weight_decay:
        kwargs["weight_decay"] = config.weight_decay
    if config.name in ("sgd", "rmsprop"):
        kwargs["momentum"] = config.momentum
    if not multipliers or all(m == 1.0 for m in multipliers.values()):
        return base(**kwargs)
    return _with_multipliers(base)(multipliers=multipliers, **kwargs)
