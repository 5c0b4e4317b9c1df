"""``--tune N`` (``tune: {trials: N}``): a fuller search than ``strategy: auto``, on Optuna.

Each trial samples, with Optuna's TPE sampler (seeded with the recipe's seed):

* the depth of the fine-tuning: ``probe`` (the recipe's frozen phases only), ``top`` (its own
  fine-tuning phase) or ``all`` (every group, ``lr_decay`` 0.5), when the recipe fine-tunes;
* that phase's learning rate (log-uniform, a tenth to thirty times the recipe's) and epochs
  (half to twice the recipe's);
* the frozen phase's learning rate (log-uniform, a third to three times the recipe's);
* head dropout (0 to 0.5) where the head has one, label smoothing (0 to 0.2) for classification,
  weight decay (log-uniform 1e-6 to 1e-2);
* for images: the input size (the contract, and 4x / 2x the images' median side when they are
  small), flips on or off when the recipe flips, and average or max pooling.

A trial trains the frozen phases and the sampled fine-tuning on the training split and returns the
task's headline metric on the validation split (``tlmulti.training.strategy``'s scoring). After
every epoch it reports minus the validation loss, and Optuna's median pruner stops a trial whose
value is below the median of earlier trials at the same epoch (after 3 complete trials and one
epoch). The study is stored in SQLite in the run folder (``RUN/tune.db``) or in ``tune.storage``
(any Optuna RDB URL, e.g. ``postgresql://user:password@host/db``, so several machines can work on
one study: start the same command on each); a study of that name that exists is continued, and
only the trials it lacks are run (``trials`` counts complete and pruned ones). ``tune.timeout``
(seconds) stops starting trials.

Afterwards the best trial's recipe is trained in full (``strategy: fixed``, ``tune.trials: 0``
in the saved ``recipe.yaml``, so ``tlmulti run RUN/recipe.yaml`` trains it without tuning),
every trial's parameters, validation metric, state and seconds are written to ``RUN/tune.csv``
(after each trial, so a crash keeps them), the parameter importances (Optuna's fANOVA) to
``metrics.json`` and ``RUN/tune_importance.png``, and the report shows them.
"""

from __future__ import annotations

import copy
import csv
import os
import socket
import sys
import time
from pathlib import Path

from tlmulti.errors import RecipeError
from tlmulti.recipe import Recipe
from tlmulti.training.strategy import _Build, _frozen, _with, smaller_sides
from tlmulti.training.strategy import check as check_search

TRIAL_FIELDS = ("number", "state", "value", "seconds", "params")


def study_storage(recipe: Recipe, run_dir: Path) -> str:
    return recipe.tune.storage or f"sqlite:///{Path(run_dir).resolve() / 'tune.db'}"


def _space(trial, base: Recipe, build: _Build) -> tuple[list[str], list | None, dict]:
    """The trial's recipe overrides, its fine-tuning phases (None: the probe) and its params."""
    overrides: list[str] = []
    frozen = [i for i, p in enumerate(base.phases) if _frozen(p)]
    tuning = [p for p in base.phases if not _frozen(p) and p.epochs]
    head_lr = base.phases[frozen[0]].learning_rate
    lr = trial.suggest_float("head_learning_rate", head_lr / 3, head_lr * 3, log=True)
    overrides += [f"phases.{i}.learning_rate={lr}" for i in frozen]
    if hasattr(base.head, "dropout"):
        overrides.append(f"head.dropout={trial.suggest_float('dropout', 0.0, 0.5)}")
    if hasattr(base.head, "label_smoothing"):
        overrides.append(f"head.label_smoothing={trial.suggest_float('label_smoothing', 0.0, 0.2)}")
    overrides.append(f"optimizer.weight_decay={trial.suggest_float('weight_decay', 1e-6, 1e-2, log=True)}")
    task = build.task
    if task.strategy_inputs:
        sizes = [max(task.image_size()), *smaller_sides(task, build.train)]
        if len(sizes) > 1:
            s = trial.suggest_categorical("image_size", sizes)
            overrides.append(f"data.image_size=[{s}, {s}]")
        if getattr(base.data.augment, "flip", "none") != "none":
            overrides.append(f"data.augment.flip={trial.suggest_categorical('flip', [base.data.augment.flip, 'none'])}")
        if getattr(base.head, "pooling", None) in ("avg", "max"):
            overrides.append(f"head.pooling={trial.suggest_categorical('pooling', ['avg', 'max'])}")
    if not tuning:
        return overrides, None, trial.params
    depth = trial.suggest_categorical("depth", ["probe", "top", "all"])
    if depth == "probe":
        return overrides, None, trial.params
    phases = copy.deepcopy(tuning)
    last = phases[-1]
    last.learning_rate = trial.suggest_float("learning_rate", last.learning_rate / 10, last.learning_rate * 30, log=True)
    epochs = int(last.epochs)
    last.epochs = trial.suggest_int("epochs", max(1, epochs // 2), max(2, epochs * 2))
    if depth == "all":
        last.unfreeze, last.lr_decay = "all", 0.5
    return overrides, phases, trial.params


class _Pruning:
    """A Keras callback reporting minus the validation loss after every epoch of every phase;
    raises Optuna's ``TrialPruned`` when the pruner says so."""

    def __new__(cls, trial):
        import keras
        import optuna

        class Callback(keras.callbacks.Callback):
            step = 0

            def on_epoch_end(self, epoch, logs=None):
                loss = (logs or {}).get("val_loss")
                if loss is None:
                    return
                trial.report(-float(loss), Callback.step)
                Callback.step += 1
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {Callback.step}")

        return Callback()


def _write_trials(study, path: Path) -> None:
    import json

    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        value = t.value if t.state.name == "COMPLETE" else None  # a pruned trial's value is its last report
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": value,
                     "seconds": None if seconds is None else round(seconds, 2), "params": json.dumps(t.params)})
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=TRIAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _importances(study, run_dir: Path) -> dict:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        values = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(
            seed=0))
    except (RuntimeError, ValueError):  # e.g. a parameter sampled in one trial only
        return {}
    from tlmulti.reports.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 0.4 * len(values) + 1))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, share of the validation metric's variance)")
    fig.tight_layout()
    fig.savefig(run_dir / "tune_importance.png", dpi=100)
    plt.close(fig)
    return {k: round(float(v), 4) for k, v in values.items()}


def tune(recipe: Recipe, run_dir: Path, trainer, out=None) -> tuple[Recipe, dict]:
    """The recipe of the best trial (to train in full) and the study's record; ``out``: where the
    trials are printed (standard output at call time by default)."""
    import optuna
    import tensorflow as tf
    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    out = out or sys.stdout
    check_search(recipe)
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    base = copy.deepcopy(recipe)
    base.strategy, base.callbacks.verbose = "fixed", 0
    base.tune.trials = 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage(recipe, run_dir)
    for attempt in range(4):  # workers starting at once on a new database race to create its tables
        try:
            study = optuna.create_study(study_name=recipe.name, storage=storage, load_if_exists=True,
                                        direction="maximize", sampler=optuna.samplers.TPESampler(seed=recipe.seed),
                                        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
            break
        except (ImportError, ValueError, RuntimeError, SQLAlchemyError) as exc:  # a bad URL, no driver, no server
            if isinstance(exc, (IntegrityError, ProgrammingError)) and attempt < 3:
                time.sleep(1.0 + attempt)
                continue
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RecipeError(f"Key 'tune.storage': Optuna cannot open the study at '{_shown(storage)}': "
                              f"{first_line}; check the URL, that the server runs and that its driver is installed "
                              "(PostgreSQL: pip install psycopg2-binary).") from None
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if not recipe.tune.storage:  # the run folder's own study, no other process on it: a trial left
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):  # by a kill
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    first = _Build(base, None, trainer)  # the data's sizes and the metric; its frozen phase fills the cache
    metric = first.metric
    done = sum(t.state in finished for t in study.trials)
    remaining = max(0, recipe.tune.trials - done)
    print(f"Tuning: {remaining} trials ({done} already in the study at {_shown(storage)}), validation {metric}:",
          file=out, flush=True)
    chosen: dict = {}

    def objective(trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which machine ran it
        overrides, phases, params = _space(trial, base, first)
        trial_recipe = _with(base, overrides)
        pruning = [_Pruning(trial)]  # one callback: its epochs count on across the phases
        build = _Build(trial_recipe, metric, trainer, callbacks=pruning)
        value = build.probe
        if phases is not None:
            value, _ = build.tune(phases, fraction=1.0, callbacks=pruning)
        chosen[trial.number] = (overrides, phases)
        return value

    def after(study_, trial):
        _write_trials(study_, run_dir / "tune.csv")
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        value = f"val {metric} {trial.value:.4f}" if complete else trial.state.name.lower()
        print(f"  trial {trial.number:>3}: {value}  {trial.params}", file=out, flush=True)

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        enough = optuna.study.MaxTrialsCallback(recipe.tune.trials, states=finished)  # several workers, one count
        study.optimize(objective, n_trials=remaining, timeout=recipe.tune.timeout, callbacks=[after, enough],
                       catch=(), gc_after_trial=True)
    finally:
        logger.setLevel(level)
    _write_trials(study, run_dir / "tune.csv")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RecipeError("Tuning finished without a complete trial (all pruned or timed out); raise tune.trials "
                          "or tune.timeout.")
    best = study.best_trial
    overrides, phases = chosen.get(best.number) or _replay(best, base, first)
    final = _with(recipe, overrides)
    final.strategy, final.tune.trials = "fixed", 0
    kept = [copy.deepcopy(p) for p in final.phases if _frozen(p)]
    final.phases = kept + ([copy.deepcopy(p) for p in phases] if phases else [])
    importances = _importances(study, run_dir)
    seconds = time.perf_counter() - t_start
    print(f"Tuning: best trial {best.number}, val {metric} {best.value:.4f}, {best.params}; {seconds:.0f} s",
          file=out, flush=True)
    final.tune.storage = None  # the final recipe trains without a study (and keeps no database password)
    return final, {"metric": metric, "storage": _shown(recipe.tune.storage) if recipe.tune.storage else "tune.db",
                   "trials": len(study.trials), "complete": len(complete),
                   "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                   "best": {"number": best.number, "val": round(best.value, 6), "params": best.params},
                   "importances": importances, "seconds": round(seconds, 2)}


def _shown(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: say only its scheme
        return url.split(":", 1)[0] + "://..."


def _replay(trial, base: Recipe, build: _Build):
    """``(overrides, phases)`` of a trial run by an earlier process, from its parameters."""
    import optuna

    fixed = optuna.trial.FixedTrial(trial.params, number=trial.number)
    overrides, phases, _ = _space(fixed, base, build)
    return overrides, phases
