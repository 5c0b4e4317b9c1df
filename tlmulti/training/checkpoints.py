"""Per-epoch checkpoints in the run folder, so an interrupted run continues where it stopped.

After every epoch (and between phases) ``RUN/checkpoint/`` holds:

* ``state.json``: the phase and epoch reached, whether early stopping ended the phase, the
  history rows and phase records so far, and the early-stopping state (wait, best value, best
  epoch);
* ``weights.npz``: every variable of the model parts (backbone, head, augmentation layers with
  their random-generator states), in a fixed order;
* ``optimizer.npz``: the optimizer's variables (moments, iteration count, so the learning-rate
  schedule continues), and ``best.npz``: the weights early stopping would restore.

Arrays are read with ``numpy.load(allow_pickle=False)``: nothing in a checkpoint is executed; a
truncated file or one holding object arrays is refused in one line naming it. A checkpoint is
written to a temporary folder and renamed into place, so a crash while writing leaves the previous
one. Before writing, the disk must have room for the new checkpoint (its arrays' size plus 1 MB);
when it has not, or a write fails with ENOSPC / EDQUOT, the temporary folder is removed, the
previous checkpoint stays, and :class:`~tlmulti.errors.DiskFullError` names the disk and the
space needed (the run then ends ``failed``, resumable once space is freed). Together with the
per-epoch data order of :func:`tlmulti.data.pipeline.make_epoch_dataset`, resuming gives the
batches, updates and history rows the uninterrupted run would have had (exactly so with
``deterministic: true``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from tlmulti import paths
from tlmulti.errors import RunError

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


def _read_npz(path: Path) -> dict:
    """Every array of ``path`` (read with ``allow_pickle=False``), or RunError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as exc:  # truncated zip, object arrays, not an npz at all
        why = "it holds object arrays, which are never unpickled" if "allow_pickle" in str(exc) else (
            f"truncated or damaged: {type(exc).__name__}: {str(exc).strip()[:120]}")
        run_dir = path.parent.parent
        raise RunError(f"Checkpoint file '{path}' cannot be read ({why}); the run cannot continue from it: start "
                       f"it again with 'tlmulti run {run_dir / 'recipe.yaml'}' and another --out.") from None


def _load_arrays(path: Path) -> list[np.ndarray]:
    data = _read_npz(path)
    return [data[f"v{i}"] for i in range(len(data))]


def _assign(variables, values, what: str, folder: Path) -> None:
    if len(variables) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        raise RunError(f"Checkpoint '{folder}' does not fit this model ({what}); it was written by another "
                       "recipe or tlmulti version. Start the run again with another --out.")
    for v, a in zip(variables, values):
        v.assign(a)


def load_state(run_dir) -> dict:
    """The checkpoint's ``state.json``; RunError naming the file when it is missing or damaged."""
    path = Path(run_dir) / FOLDER / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        state = exc
    if not isinstance(state, dict) or not {"phase", "epoch", "history", "records"} <= set(state):
        raise RunError(f"Checkpoint file '{path}' is missing or damaged; the run cannot continue from it: start it "
                       f"again with 'tlmulti run {Path(run_dir) / 'recipe.yaml'}' and another --out.")
    return state


def save(run_dir, state: dict, parts, optimizer=None, best_weights=None) -> None:
    """Write the checkpoint (atomically: a new folder renamed over the old one). A full disk
    raises DiskFullError and leaves the previous checkpoint as it was."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{FOLDER}.{os.getpid()}.tmp"
    files = {"weights.npz": {f"{role}.{i}": np.asarray(v) for role, layer in tracked_layers(parts).items()
                             for i, v in enumerate(_variables(layer))}}
    if optimizer is not None and optimizer.built:
        files["optimizer.npz"] = {f"v{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)}
    if best_weights is not None:
        files["best.npz"] = {f"v{i}": np.asarray(w) for i, w in enumerate(best_weights)}
    text = json.dumps(state, indent=1)
    need = sum(a.nbytes + 4096 for arrays in files.values() for a in arrays.values()) + len(text)
    had = (run_dir / FOLDER).is_dir()
    fix = (f"free some space and run 'tlmulti resume {run_dir}' to continue from the last checkpoint" if had
           else "free some space and start the run again (nothing was trained yet)")
    shutil.rmtree(tmp, ignore_errors=True)
    paths.check_free(run_dir, need, "the checkpoint", fix)
    try:
        tmp.mkdir()
        for name, arrays in files.items():
            np.savez(tmp / name, **arrays)
        (tmp / "state.json").write_text(text)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if paths.is_disk_full(exc):
            raise paths.disk_full(run_dir, "the checkpoint", fix, need) from None
        raise
    final, old = run_dir / FOLDER, run_dir / f".{FOLDER}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_weights(run_dir, parts) -> None:
    """Put the saved variables back into every part the checkpoint holds."""
    folder = Path(run_dir) / FOLDER
    saved = {}
    for key, value in _read_npz(folder / "weights.npz").items():
        role, _, i = key.rpartition(".")
        saved.setdefault(role, {})[int(i)] = value
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
