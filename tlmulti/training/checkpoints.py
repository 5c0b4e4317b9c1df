"""Per-epoch checkpoints in the run folder, so an interrupted run continues where it stopped.

After every epoch (and between phases) ``RUN/checkpoint/`` holds:

* ``state.json``: the phase and epoch reached, whether early stopping ended the phase, the
  history rows and phase records so far, and the early-stopping state (wait, best value, best
  epoch);
* ``weights.npz``: every variable of the model parts (backbone, head, augmentation layers with
  their random-generator states), in a fixed order;
* ``optimizer.npz``: the optimizer's variables (moments, iteration count, so the learning-rate
  schedule continues), and ``best.npz``: the weights early stopping would restore.

Arrays are read with ``numpy.load(allow_pickle=False)``: nothing in a checkpoint is executed. A
checkpoint is written to a temporary folder and renamed into place, so a crash while writing
leaves the previous one. Together with the per-epoch data order of
:func:`tlmulti.data.pipeline.make_epoch_dataset`, resuming gives the batches, updates and
history rows the uninterrupted run would have had (exactly so with ``deterministic: true``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

FOLDER = "checkpoint"


def tracked_layers(parts) -> dict:
    """The layers whose variables a checkpoint holds, by role."""
    layers = {"backbone": parts.backbone, "head": parts.head, "augment": parts.augment,
              "preprocess": parts.preprocess}
    return {k: v for k, v in layers.items() if v is not None}


def _variables(layer) -> list:
    seen, out = set(), []
    for v in layer.variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _save_arrays(path: Path, variables) -> None:
    np.savez(path, **{f"v{i}": np.asarray(v) for i, v in enumerate(variables)})


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[f"v{i}"] for i in range(len(data.files))]


def _assign(variables, values, what: str, folder: Path) -> None:
    from tlmulti.errors import RunError

    if len(variables) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        raise RunError(f"Checkpoint '{folder}' does not fit this model ({what}); it was written by another "
                       "recipe or tlmulti version. Start the run again with another --out.")
    for v, a in zip(variables, values):
        v.assign(a)


def load_state(run_dir) -> dict | None:
    folder = Path(run_dir) / FOLDER
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None


def save(run_dir, state: dict, parts, optimizer=None, best_weights=None) -> None:
    """Write the checkpoint (atomically: a new folder renamed over the old one)."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    arrays = {}
    for role, layer in tracked_layers(parts).items():
        arrays.update({f"{role}.{i}": np.asarray(v) for i, v in enumerate(_variables(layer))})
    np.savez(tmp / "weights.npz", **arrays)
    if optimizer is not None and optimizer.built:
        _save_arrays(tmp / "optimizer.npz", optimizer.variables)
    if best_weights is not None:
        np.savez(tmp / "best.npz", **{f"v{i}": np.asarray(w) for i, w in enumerate(best_weights)})
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    final, old = run_dir / FOLDER, run_dir / f".{FOLDER}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_weights(run_dir, parts) -> None:
    """Put the saved variables back into every part the checkpoint holds."""
    folder = Path(run_dir) / FOLDER
    with np.load(folder / "weights.npz", allow_pickle=False) as data:
        saved = {}
        for key in data.files:
            role, _, i = key.rpartition(".")
            saved.setdefault(role, {})[int(i)] = data[key]
    for role, layer in tracked_layers(parts).items():
        if role in saved:
            values = [saved[role][i] for i in range(len(saved[role]))]
            _assign(_variables(layer), values, role, folder)


def restore_optimizer(run_dir, optimizer, variables) -> bool:
    """Build ``optimizer`` for ``variables`` and load its saved state; False when none was saved."""
    folder = Path(run_dir) / FOLDER
    if not (folder / "optimizer.npz").exists():
        return False
    optimizer.build(variables)
    _assign(optimizer.variables, _load_arrays(folder / "optimizer.npz"), "optimizer", folder)
    return True


def best_weights(run_dir) -> list[np.ndarray] | None:
    path = Path(run_dir) / FOLDER / "best.npz"
    return _load_arrays(path) if path.exists() else None


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras early stopping whose state (wait, best value, best epoch, best weights) can be saved
    in a checkpoint and put back, so a resumed phase stops where the uninterrupted one would."""

    def __init__(self, *args, restored: dict | None = None, restored_weights=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._restored = restored
        self._restored_weights = restored_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._restored:
            self.wait = int(self._restored["wait"])
            self.best = None if self._restored["best"] is None else float(self._restored["best"])
            self.best_epoch = int(self._restored["best_epoch"])
            self.best_weights = self._restored_weights
            self._restored = None

    def state(self) -> dict:
        return {"wait": int(self.wait), "best": None if self.best is None else float(self.best),
                "best_epoch": int(self.best_epoch)}


class EpochCheckpoint(keras.callbacks.Callback):
    """Records the history row of each epoch and writes the checkpoint after it."""

    def __init__(self, run_dir, phase_index: int, phase_name: str, epoch0: int, history: list, records: list,
                 parts, early_stopping=None, extra_state: dict | None = None):
        super().__init__()
        self.run_dir, self.phase_index, self.phase_name = run_dir, phase_index, phase_name
        self.epoch0, self.history, self.records = epoch0, history, records
        self.parts, self.early_stopping = parts, early_stopping
        self.extra_state = extra_state or {}

    def on_epoch_end(self, epoch, logs=None):
        row = {"phase": self.phase_name, "epoch": self.epoch0 + epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.history.append(row)
        if self.run_dir is None:
            return
        es = self.early_stopping
        state = {"phase": self.phase_index, "epoch": epoch + 1, "phase_done": bool(self.model.stop_training),
                 "history": self.history, "records": self.records,
                 "early_stopping": es.state() if es is not None else None, **self.extra_state}
        save(self.run_dir, state, self.parts, optimizer=self.model.optimizer,
             best_weights=es.best_weights if es is not None else None)
