"""The run card (in ``run.json``) and weights lockfiles: what a run was made of, pinned by hash.

The card records the versions (tlmulti, Python, TensorFlow, Keras, keras-hub), the platform
and devices, the seed and determinism, the command line, and sha256 hashes of the resolved
recipe, of the data and of every weights file the backbone was loaded from. The data hash covers
the content of every input file (for a manifest: the manifest and each file it names), keyed by
path relative to the data folder, so it changes when a file changes, is added or removed, and not
when the data folder moves.

A lockfile (``tlmulti weights lock RECIPE > weights.lock``) lists, per backbone, the weights
files and their sha256; ``--weights-lock FILE`` (recipe key ``backbone.weights_lock``) makes
training refuse any weights file whose hash differs, so an air-gapped site that moves a lockfile
and a weights store together knows it got the same model.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path

from tlmulti.errors import RunError
from tlmulti.integrity import file_sha256, sha256_of


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def weights_files(spec, weights: str | None = None) -> list[Path]:
    """The files (or folders) the backbone's weights are read from on this machine."""
    from tlmulti.backbones import RANDOM, weights_status

    if weights == RANDOM:
        return []
    if weights:
        return [Path(weights).expanduser()]
    ok, where = weights_status(spec)
    return [Path(where)] if ok and Path(where).exists() else []


def weights_entries(spec, weights: str | None = None) -> list[dict]:
    return [{"backbone": spec.name, "source": spec.source, "file": str(p), "sha256": sha256_of(p)}
            for p in weights_files(spec, weights)]


def data_fingerprint(ref: str | None, examples=None) -> dict | None:
    """``{"path", "files", "sha256"}`` of a data reference: the content of every file it is made of."""
    if not ref:
        return None
    from tlmulti.data import resolve_source

    root = resolve_source(ref)
    base = root if root.is_dir() else root.parent
    files = set()
    if root.is_file():
        files.add(root)
    else:
        files.update(p for p in root.rglob("*") if p.is_file())
    for p in (examples.meta.get("path") or []) if examples is not None else []:
        files.add(Path(p))
    digest = hashlib.sha256()
    for p in sorted(files):
        try:
            rel = os.path.relpath(p, base)
        except ValueError:
            rel = str(p)
        digest.update(rel.encode() + b"\0" + file_sha256(p).encode())
    return {"path": str(root), "files": len(files), "sha256": digest.hexdigest()}


def run_card(recipe, spec, splits: dict, command=None) -> dict:
    """The card of a run about to start (``ended`` and ``status`` are set when it stops)."""
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    data = {name: data_fingerprint(getattr(recipe.data, name, None), splits.get(name)) for name in ("train", "val", "test")}
    data["target"] = data_fingerprint(recipe.adaptation.target_data)
    return {
        "versions": {"tlmulti": _version("tlmulti"), "python": platform.python_version(),
                     "tensorflow": tf.__version__, "keras": _version("keras"), "keras_hub": _version("keras-hub")},
        "platform": {"system": platform.platform(), "machine": platform.machine(), "host": socket.gethostname(),
                     "cpus": os.cpu_count(), "gpus": gpus},
        "seed": recipe.seed, "deterministic": bool(recipe.deterministic),
        "command": list(command if command is not None else sys.argv),
        "recipe_sha256": hashlib.sha256(recipe.to_yaml().encode()).hexdigest(),
        "data": {k: v for k, v in data.items() if v is not None},
        "weights": weights_entries(spec, recipe.backbone.weights),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def read_lock(path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
        entries = data["weights"]
        assert all({"backbone", "file", "sha256"} <= set(e) for e in entries)
        return entries
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise RunError(f"Weights lock '{path}' is not a tlmulti lockfile (JSON with a 'weights' list); "
                       "make one with 'tlmulti weights lock RECIPE > weights.lock'.") from None


def check_lock(lock_path, spec, weights: str | None = None) -> None:
    """Refuse the backbone's weights unless each file is in the lock with the same sha256."""
    entries = [e for e in read_lock(lock_path) if e["backbone"] == spec.name]
    if not entries:
        raise RunError(f"Weights lock '{lock_path}' has no entry for backbone '{spec.name}'; lock it with "
                       f"'tlmulti weights lock' on this recipe.")
    pinned = {e["sha256"] for e in entries}
    for entry in weights_entries(spec, weights):
        if entry["sha256"] not in pinned:
            raise RunError(
                f"Weights file '{entry['file']}' of backbone '{spec.name}' has sha256 {entry['sha256']}, which the "
                f"lock '{lock_path}' does not pin ({', '.join(sorted(pinned))}); refusing it. Bring the locked "
                "weights store, or lock again if the change is intended."
            )


def model_card(run_dir, recipe, task, metrics: dict, summary: dict) -> dict:
    """The run's model card (:mod:`tlmulti.reports.model_card`) from the finished run's parts;
    the weights files come from the run card in ``run.json`` (a resumed run keeps its own)."""
    from tlmulti import registry
    from tlmulti.reports.model_card import build_card
    from tlmulti.runs import read_info

    spec = task.spec
    description = registry.get_task(recipe.task).description  # the task ran: it is registered
    model = {"source": spec.source, "handle": spec.handle, "description": spec.description,
             "license": spec.license, "input": dict(spec.input),
             "weights": read_info(run_dir).get("weights") or [], "primary_metric": task.primary_metric,
             "task_description": description, "threshold": getattr(task, "threshold", None)}
    return build_card(metrics, recipe=recipe.to_dict(), summary=summary, classes=list(task.classes or []),
                      model=model)
