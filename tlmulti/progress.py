"""Progress lines for long steps outside ``fit`` (reading files, building datasets, synthesising
speech): Keras's own progress bar, so every long step looks the same."""

from __future__ import annotations

import sys


def progress_bar(n: int, what: str, show: bool | None = None, unit: str = "file", at_least: int = 1000):
    """A ``keras.utils.Progbar`` over ``n`` items after a line naming ``what``; None (nothing
    printed) for fewer than ``at_least`` items unless ``show`` forces it on or off."""
    if show is False or (show is None and n < at_least):
        return None
    import keras

    print(f"{what}: {n}", flush=True)
    return keras.utils.Progbar(n, verbose=1 if sys.stdout.isatty() else 2, unit_name=unit)


class Every:
    """Update ``bar`` every ``step`` items and at the end (a Progbar update costs a print)."""

    def __init__(self, bar, n: int, step: int = 200):
        self.bar, self.n, self.step, self.done = bar, n, step, 0

    def add(self, k: int = 1) -> None:
        self.done += k
        if self.bar is not None and (self.done % self.step < k or self.done >= self.n):
            self.bar.update(min(self.done, self.n))
