"""The time budget of ``strategy: auto``: whether a candidate fits, and a short run's seconds at
full length, measured epoch by epoch."""

from __future__ import annotations

import time

import numpy as np


def fits(elapsed: float, cost: float, plain: float, best_full: float | None, budget: float) -> bool:
    """Whether a candidate of ``cost`` seconds, after ``elapsed``, leaves room in ``budget`` plain
    runs (of ``plain`` seconds) for the final training: a plain run, or ``best_full`` (the best
    candidate's full run) where that is longer."""
    return elapsed + cost + max(plain, best_full or 0.0) <= budget * plain


def full_length(seconds: float, planned: list[int], epoch_seconds: list[list[float]]) -> float:
    """A short run's ``seconds`` scaled to its phases' ``planned`` epochs: each epoch not run costs
    the phase's median epoch after its first (``epoch_seconds``, one list per phase), so the one-off
    costs of a run (the cut cache's features, tracing the model, scoring) count once."""
    extra = 0.0
    for epochs, times in zip(planned, epoch_seconds):
        if times:
            steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
            extra += max(0, epochs - len(times)) * steady
    return seconds + extra


def epoch_clock():
    """A Keras callback that records each epoch's seconds, one list per ``fit`` (``.phases``)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.phases, self._t = [], 0.0

        def on_train_begin(self, logs=None):
            self.phases.append([])

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.phases[-1].append(time.perf_counter() - self._t)

    return EpochClock()
