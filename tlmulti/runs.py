"""Run folders: created atomically, never overwritten, never deleted once training has begun.

A run folder holds ``model.keras`` (the inference model, preprocessing included),
``recipe.yaml`` (the resolved recipe: ``tlmulti run`` on it reproduces the run), ``run.json``
(status, the run card, task, classes), ``metrics.json``, ``MODEL_CARD.md`` (the model card,
:mod:`tlmulti.reports.model_card`), ``history.csv``, the data summary, plots, ``report.html``
and, while training, ``checkpoint/`` (see :mod:`tlmulti.training.checkpoints`).

``run.json`` ``status`` is ``running``, ``interrupted`` (Ctrl-C / SIGTERM: resume with
``tlmulti resume``), ``failed`` (with the error; resumable from its last checkpoint) or
``finished``. A run that fails before its first epoch leaves nothing behind; after that the folder
stays, marked. Two trainings started at once with the same ``--out``: exactly one gets it; two
``tlmulti resume`` of one run at once: exactly one takes it over (the take-over holds an
``flock`` on ``.tlmulti-resume.lock`` while it checks the owner and claims the folder). A folder
left by a run that never reached its first checkpoint (killed, or its first checkpoint did not
fit on the disk) holds no trained work: a new run with the same ``--out`` reuses it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from tlmulti.errors import RunError

_MARKER = ".tlmulti-run"  # the lock: created with O_EXCL by the process that owns the folder
_TAKEOVER_LOCK = ".tlmulti-resume.lock"  # flock'ed while a resume checks the owner and claims the folder
CREATED_AT_START = (_MARKER, "run.json", "recipe.yaml", "data_summary.json", "splits.csv")


def _claim(path: Path) -> None:
    try:
        fd = os.open(path / _MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise RunError(f"Run folder '{path}' is being used by another training; choose another --out.") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except OSError:  # a full disk: no half-written claim is left behind
        (path / _MARKER).unlink(missing_ok=True)
        raise


def _refuse_existing(path: Path) -> None:
    info = read_info(path)
    if _never_started(path, info):  # no trained work in it: this run takes the folder
        shutil.rmtree(path, ignore_errors=True)
        try:
            path.mkdir()
            return
        except FileExistsError:
            if not path.is_dir() or any(path.iterdir()):
                raise RunError(f"Run folder '{path}' is being used by another training; choose another --out.") from None
            return
    if info.get("status") in ("running", "interrupted", "failed"):
        raise RunError(
            f"Run folder '{path}' holds a {info['status']} run; continue it with 'tlmulti resume {path}' "
            "or choose another --out (runs are never overwritten)."
        )
    raise RunError(
        f"Run folder '{path}' already exists and is not empty; choose another --out "
        "(runs are never overwritten) or remove it yourself."
    )


def create_run_dir(out, name: str) -> Path:
    """Create and claim the run folder. An explicit ``out`` that exists and is not empty is an
    error (naming ``tlmulti resume`` when it holds an unfinished run); the default
    ``runs/<name>`` gets a numbered suffix instead."""
    path = Path(out).expanduser() if out else Path("runs") / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if out:
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir() or any(path.iterdir()):
                    _refuse_existing(path)
        else:
            base, n = path, 1
            while True:
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    n += 1
                    path = base.with_name(f"{base.name}-{n}")
        _claim(path)
    except RunError:
        raise
    except OSError as exc:
        raise RunError(f"Cannot create run folder '{path}' ({exc.strerror or exc}); choose another --out.") from None
    return path


def read_info(run_dir) -> dict:
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def run_info(run_dir, need: tuple = ()) -> dict:
    """``run.json`` of ``run_dir`` with the keys ``need`` (``classes``: a non-empty list); a
    missing, damaged or incomplete file is a RunError naming it and the way out."""
    path = Path(run_dir) / "run.json"
    again = (f"restore it from a backup, or train again with 'tlmulti run {Path(run_dir) / 'recipe.yaml'}' "
             "and another --out")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"'{run_dir}' is not a tlmulti run folder (no run.json); give the --out folder of a "
                       "'train' command.") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"'{path}' is damaged (not valid JSON: {str(exc)[:80]}); {again}.") from None
    if not isinstance(info, dict):
        raise RunError(f"'{path}' is damaged (not a JSON object); {again}.")
    for key in need:
        value = info.get(key)
        if value is None or (key == "classes" and not (isinstance(value, list) and value
                                                       and all(isinstance(c, str) for c in value))):
            raise RunError(f"'{path}' has no valid '{key}' (damaged or edited); {again}.")
    return info


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader sees the old file or the whole new one. A failed write
    (a full disk) leaves the old file and no temporary one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def set_status(run_dir: Path, status: str, **fields) -> dict:
    """Update ``run.json``: ``status`` and the given fields (``error``, ``ended``, ...)."""
    info = read_info(run_dir)
    info.update(fields, status=status)
    write_json(Path(run_dir) / "run.json", info)
    return info


def started(run_dir: Path) -> bool:
    """Whether training has begun to fill the folder (a checkpoint, a model or a tuning study exists)."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in ("checkpoint", ".checkpoint.old", "model.keras", "tune.db"))


def _never_started(path: Path, info: dict) -> bool:
    """A run folder whose run stopped before its first checkpoint (on this machine, its owner
    gone): only what a run writes at its start is there, nothing trained."""
    if info.get("status") not in ("running", "interrupted", "failed") or started(path):
        return False
    try:
        owner = json.loads((path / _MARKER).read_text())
        if owner.get("host") != socket.gethostname() or owner_alive(path):
            return False
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return False
    return all(p.name in CREATED_AT_START or p.name.startswith(".") for p in path.iterdir())


def release(run_dir: Path) -> None:
    (Path(run_dir) / _MARKER).unlink(missing_ok=True)


def discard(path: Path) -> None:
    """After a failure before the first epoch: remove the folder if it holds only what this
    process wrote at the start; otherwise leave it."""
    path = Path(path)
    if started(path) or not (path / _MARKER).exists():
        return
    if all(p.name in CREATED_AT_START or p.name.startswith(".") for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


def owner_alive(run_dir: Path) -> bool:
    """Whether the process that claimed the folder still runs on this machine."""
    try:
        owner = json.loads((Path(run_dir) / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False
    return True


def take_over(run_dir: Path) -> None:
    """Claim an unfinished run for ``tlmulti resume``: refused while its owner still runs, and
    atomic: of several resumes at once, exactly one claims it (the others see it running)."""
    import fcntl

    run_dir = Path(run_dir)
    status = run_info(run_dir).get("status")
    if status == "finished":
        raise RunError(f"Run '{run_dir}' is finished; there is nothing to resume.")
    if status not in ("running", "interrupted", "failed"):
        raise RunError(f"'{run_dir}' is not a tlmulti run folder (no run.json with a status); give the --out "
                       "folder of a 'train' command.")
    try:
        lock = os.open(run_dir / _TAKEOVER_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise RunError(f"Cannot lock run folder '{run_dir}' ({exc.strerror or exc}).") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one take-over at a time; the kernel drops it if this process dies
        if owner_alive(run_dir):
            try:
                pid = json.loads((run_dir / _MARKER).read_text())["pid"]
            except (OSError, ValueError, KeyError):
                pid = "?"
            raise RunError(f"Run '{run_dir}' is still training (process {pid}).")
        old = run_dir / ".checkpoint.old"
        if not (run_dir / "checkpoint").is_dir() and old.is_dir():  # stopped between the two renames of a save
            os.replace(old, run_dir / "checkpoint")
        tuning = not (run_dir / "checkpoint").is_dir() and (run_dir / "tune.db").is_file()  # the study goes on
        if not (run_dir / "checkpoint").is_dir() and not tuning:
            recipe = run_dir / "recipe.yaml"
            how = f"'tlmulti run {recipe}'" if recipe.is_file() else "your recipe"
            where = (f"--out {run_dir} (the folder is reused)" if _never_started(run_dir, read_info(run_dir))
                     else "another --out")
            raise RunError(f"Run '{run_dir}' has no checkpoint (it stopped before its first epoch, nothing was "
                           f"trained); start it again with {how} and {where}.")
        state = run_dir / "checkpoint" / "state.json"
        try:
            saved = {"phase": 0, "epoch": 0, "history": [], "records": []} if tuning else json.loads(state.read_text())
            if not isinstance(saved, dict) or not {"phase", "epoch", "history", "records"} <= set(saved):
                raise ValueError("not a checkpoint state")
        except (OSError, ValueError):
            raise RunError(f"Checkpoint file '{state}' is missing or damaged; the run cannot continue from it: "
                           f"start it again with 'tlmulti run {run_dir / 'recipe.yaml'}' and another --out.") from None
        run_info(run_dir, need=() if tuning else ("classes",))
        release(run_dir)
        try:
            _claim(run_dir)
        except OSError as exc:
            from tlmulti import paths

            if paths.is_disk_full(exc):
                raise paths.disk_full(run_dir, "the run's lock file", f"free some space and run 'tlmulti resume "
                                      f"{run_dir}' again") from None
            raise RunError(f"Cannot claim run folder '{run_dir}' ({exc.strerror or exc}).") from None
    finally:
        os.close(lock)  # releases the flock


def absolute_paths(recipe):
    """A deep copy of the recipe with data paths absolute, so the saved recipe runs from anywhere."""
    import copy

    from tlmulti.recipe import resolve_path

    recipe = copy.deepcopy(recipe)
    for key in ("train", "val", "test"):
        setattr(recipe.data, key, resolve_path(getattr(recipe.data, key)))
    recipe.adaptation.target_data = resolve_path(recipe.adaptation.target_data)
    return recipe


def begin_run(run_dir: Path, recipe, task, classes, summary: dict, card: dict) -> None:
    """What the folder holds once training starts: the resolved recipe (every derived value
    filled in, so the run can be resumed or reproduced), the data summary and ``run.json`` with
    status ``running`` and the run card."""
    spec = task.spec
    recipe.save(run_dir / "recipe.yaml")
    write_json(run_dir / "data_summary.json", summary)
    info = {"status": "running", "task": recipe.task, "backbone": recipe.backbone.name, "classes": list(classes),
            "backbone_spec": {"source": spec.source, "families": list(spec.families), "input": spec.input,
                              "layer_groups": {k: list(v) for k, v in spec.layer_groups.items()},
                              "feature_layers": list(spec.feature_layers), "options": spec.options},
            **card}
    write_json(run_dir / "run.json", info)


def begin_tuning(run_dir: Path, recipe) -> None:
    """What the folder holds while a study runs: the recipe as given (``tlmulti resume`` continues
    the study from it) and ``run.json`` with status ``running``."""
    recipe.save(run_dir / "recipe.yaml")
    write_json(run_dir / "run.json", {"status": "running", "stage": "tuning", "task": recipe.task,
                                      "backbone": recipe.backbone.name})


def write_splits(run_dir: Path, splits: dict) -> None:
    """``splits.csv`` (``path,split``): which input file went to which split, for an audit of
    leakage between them. Splits whose examples have no paths (texts) are left out."""
    import csv

    rows = []
    for name, examples in splits.items():
        paths = (examples.meta.get("path") if examples is not None else None) or []
        seen = set()
        for path in paths:  # one row per file (segmentation tiles share their image's path)
            if path not in seen:
                seen.add(path)
                rows.append((str(path), name))
    if not rows:
        return
    with open(run_dir / "splits.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split"])
        writer.writerows(rows)


def finish_run(run_dir: Path, recipe, model, metrics: dict, history: list, card: str = "", **fields) -> None:
    """The finished run: the model (written atomically), metrics, ``MODEL_CARD.md`` (``card``),
    history, curves; status ``finished`` and ``fields`` (the decision threshold) in ``run.json``;
    the folder's lock released."""
    save_model(model, run_dir / "model.keras")
    write_json(run_dir / "metrics.json", metrics)
    if card:
        (run_dir / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    write_history(run_dir / "history.csv", history)
    if recipe.output.plots and history:
        from tlmulti.reports.plots import plot_curves

        plot_curves(history, run_dir / "curves.png")
    set_status(run_dir, "finished", ended=time.strftime("%Y-%m-%dT%H:%M:%S"), **fields)
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # the model is written: no resume needed
    release(run_dir)


def save_model(model, path: Path) -> None:
    """Save ``model`` to ``path`` through a temporary file, so a full disk or a crash never
    leaves a half-written model that looks finished."""
    from tlmulti import paths

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    fix = f"free some space and run 'tlmulti resume {path.parent}' to finish the run from its last checkpoint"
    need = sum(4 * _size(w) for w in model.weights) + (1 << 16)  # float32 weights and the archive's files
    paths.check_free(path.parent, need, f"the model {path.name}", fix)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if paths.is_disk_full(exc):
            raise paths.disk_full(path.parent, f"the model {path.name}", fix, need) from None
        raise RunError(f"Cannot write '{path}' ({exc.strerror or exc}); free some disk space and run "
                       f"'tlmulti resume {path.parent}' to finish the run from its last checkpoint.") from None
    finally:
        tmp.unlink(missing_ok=True)


def _size(weight) -> int:
    n = 1
    for d in weight.shape:
        n *= int(d)
    return n


def write_history(path: Path, history: list) -> None:
    columns = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or ["phase", "epoch"])
        writer.writeheader()
        writer.writerows(history)


def _run_spec(name: str, info: dict):
    """The backbone spec a run was trained with: the registry's, or the copy kept in run.json
    (a custom backbone registered in the training script need not be registered to predict)."""
    from tlmulti import registry
    from tlmulti.errors import RegistryError

    try:
        return registry.get_backbone(name)
    except RegistryError:
        saved = info.get("backbone_spec")
        if not saved:
            raise
        return registry.BackboneSpec(
            name=name, source=saved["source"], families=tuple(saved["families"]), input=saved["input"],
            layer_groups={k: tuple(v) for k, v in saved["layer_groups"].items()},
            feature_layers=tuple(saved["feature_layers"]), options=saved.get("options", {}))


SOURCE_ONLY_MODEL = "source_only.keras"  # a run with adaptation: the model before it


def load_run(run_dir, model_file: str = "model.keras"):
    """(recipe, task, model) of a finished run; errors name the missing file. ``model_file``:
    another model of the run (``source_only.keras``: the model before domain adaptation)."""

    import tlmulti.layers  # noqa: F401  registers custom layers
    from tlmulti.recipe import load_recipe
    from tlmulti.tasks import task_class

    run_dir = Path(run_dir)
    status = read_info(run_dir).get("status")
    if status in ("running", "interrupted", "failed"):
        raise RunError(f"Run '{run_dir}' is not finished (status {status}); finish it with "
                       f"'tlmulti resume {run_dir}' first.")
    for name in ("model.keras", "recipe.yaml", "run.json"):
        if not (run_dir / name).is_file():
            raise RunError(
                f"'{run_dir}' is not a finished run folder: {name} is missing "
                "(give the --out folder of a 'train' command)."
            )
    info = run_info(run_dir, need=("classes",))
    recipe = load_recipe(run_dir / "recipe.yaml")
    task = task_class(recipe.task)(recipe, spec=_run_spec(recipe.backbone.name, info))
    task.classes = info["classes"]
    if info.get("threshold") is not None:
        task.threshold = info["threshold"]
    from tlmulti.backbones.local import load_keras_file

    if not (run_dir / model_file).is_file():
        raise RunError(f"Run '{run_dir}' has no {model_file}: only runs trained with adaptation.method other than "
                       "none keep their source-only model.")
    model = load_keras_file(run_dir / model_file)
    return recipe, task, model


def save_run_backbone(run_dir, name: str, overwrite: bool = False) -> str:
    """Save the (fine-tuned) backbone of a run folder as local backbone ``name``, with the
    contract, layer groups and skip layers of the spec it was trained with."""
    from tlmulti.backbones.local import save_backbone

    recipe, task, model = load_run(run_dir)
    layer = next((l for l in model.layers if l.name == "backbone" or (
        hasattr(l, "layers") and l.name not in ("head", "augment")
        and l.__class__.__name__ in ("Functional", "Model"))), None)
    if layer is None:
        raise RunError(f"Run '{run_dir}' has no backbone layer to save.")
    spec = task.spec
    names = [l.name for l in layer.layers]
    groups = {k: list(v) for k, v in spec.layer_groups.items()  # only groups the saved model still has
              if any(re.fullmatch("|".join(f"(?:{p})" for p in v), n) for n in names)}
    return save_backbone(layer, name, families=spec.families, input=dict(spec.input), layer_groups=groups,
                         feature_layers=spec.feature_layers, output_layer="",
                         description=f"fine-tuned from {spec.name} in {Path(run_dir).name}", overwrite=overwrite)
