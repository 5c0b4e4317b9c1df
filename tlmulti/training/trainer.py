"""The one trainer: phased freeze/unfreeze fine-tuning for every task.

``train_on(recipe, workers_for(recipe))`` reads the data through the recipe's task, builds the
model inside the recipe's ``tf.distribute`` strategy, runs :func:`fine_tune` and writes the run
folder (``tlmulti.train``, in :mod:`tlmulti.training.pretrain`, first builds a missing source
backbone). ``fine_tune`` runs the phases in order:

* a phase where no backbone group trains fits only the head, with the backbone called with
  ``training=False``; its features are computed once and cached (``cache_features: auto``), so
  each epoch costs a head update, not a backbone pass. Augmentation is not applied to cached
  features; set ``cache_features: false`` to augment in a frozen phase;
* a phase that unfreezes groups recompiles at its own learning rate (optionally lower for lower
  groups); BatchNorm follows the phase's policy (see :mod:`tlmulti.training.freezing`). With
  ``cache_features: auto`` an image, text or speech classification phase computes the frozen part
  below its lowest unfrozen group once and trains the layers above it on that cache
  (:mod:`tlmulti.training.cut`, a flip as views); with other random augmentation (unless ``true``),
  ``cache_features: false``, or a backbone that cannot be cut there, it trains end to end.

Each phase has early stopping with best-weight restore (recipe ``callbacks``), optional class
weights and TensorBoard logs. What every phase used is returned and written to metrics.json.

Example::

    import tlmulti
    recipe = tlmulti.load_recipe("recipes/vision/fashion_mnist.yaml", overrides=["phases.1.epochs=1"])
    run = tlmulti.train(recipe, out="runs/quick")
    print(run.metrics["test"]["accuracy"])
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlmulti import runs
from tlmulti.data.summary import format_summary, summarize
from tlmulti.errors import RecipeError, RunError, TlmultiError
from tlmulti.recipe import Recipe
from tlmulti.tasks import make_task
from tlmulti.training.distribute import Workers, get_strategy, prepare, workers as place_of
from tlmulti.training.freezing import group_multipliers, resolve_unfreeze, set_trainable


@dataclass
class Run:
    """A finished run: its folder, metrics, the trained (inference) model, the task that ran it,
    and ``headline``, the one line that sums it up (the main test or validation metric)."""

    dir: Path
    metrics: dict
    model: object = None
    history: list = field(default_factory=list)
    task: object = None
    recipe: Recipe | None = None  # as run: every value derived from the data filled in

    @property
    def headline(self) -> str:
        return self.task.headline(self.metrics) if self.task is not None and self.dir is not None else ""


def _verbosity(recipe: Recipe) -> int:
    import sys

    if recipe.callbacks.verbose is not None:
        return recipe.callbacks.verbose
    return 1 if sys.stdout.isatty() else 2


def derive_phase_lengths(recipe: Recipe, n_train: int, steps_target=None) -> None:
    """Replace ``epochs: auto`` by a count scaled to the training set and, with
    ``callbacks.early_stopping.patience: auto``, give each phase its own patience (a fifth of its
    epochs, at least 2); both are written into the recipe. ``steps_target``: the task's
    :attr:`~tlmulti.tasks.base.Task.phase_steps` (steps aimed at, fewest and most epochs, for a
    frozen phase and for one that trains the backbone; by default 300, 10-50 and 150, 3-15)."""
    from tlmulti.tasks.base import Task

    targets = steps_target or Task.phase_steps
    steps = max(1, -(-n_train // recipe.data.batch_size))
    for phase in recipe.phases:
        if phase.epochs == "auto":
            frozen = phase.unfreeze in ("none", "", [], "top:0")
            target, low, high = targets["frozen" if frozen else "trained"]
            phase.epochs = int(min(max(round(target / steps), low), high))
        if phase.patience is None and recipe.callbacks.early_stopping.patience == "auto":
            phase.patience = max(2, round(phase.epochs / 5))


def fine_tune(parts, task, train, val, recipe: Recipe, run_dir: Path | None = None, resume: dict | None = None,
              workers: Workers = Workers(), callbacks=()):
    """Run the recipe's phases on ``parts``; returns (history rows, phase records). ``callbacks``:
    more Keras callbacks for every phase's ``fit`` (the tuner's pruning).

    With ``run_dir``, a checkpoint is written after every epoch and between phases
    (:mod:`tlmulti.training.checkpoints`); ``resume`` (a checkpoint's state) continues from it.
    With several ``workers`` (:mod:`tlmulti.training.distribute`), this worker trains on its
    shard of ``train`` and ``val``; steps and epochs are those of the whole set.
    """
    import keras

    from tlmulti.data.pipeline import make_dataset, make_epoch_dataset, with_class_weights
    from tlmulti.training import checkpoints, cut as cut_cache
    from tlmulti.training.features import frozen_features
    from tlmulti.training.optimizers import learning_rate_schedule, make_optimizer

    derive_phase_lengths(recipe, len(train), task.phase_steps)
    train = task.training_examples(train)
    group_names = list(parts.groups)
    batch = recipe.data.batch_size
    steps_per_epoch = max(1, -(-len(train) // batch))
    class_weight = task.class_weight(train)
    train, val = workers.shard(train), workers.shard(val)
    history = list(resume["history"]) if resume else []
    records = list(resume["records"]) if resume else []
    if run_dir is not None and resume is None:  # training has begun: from here the folder is kept
        checkpoints.save(run_dir, {"phase": 0, "epoch": 0, "phase_done": False, "history": [], "records": [],
                                   "early_stopping": None}, parts)
    cache = None  # (train features, val features), valid while the backbone is unchanged
    es_config = recipe.callbacks.early_stopping
    for i, phase in enumerate(recipe.phases):
        start = time.perf_counter()
        resuming = resume is not None and i == resume["phase"]
        if resume is not None and i < resume["phase"]:
            continue  # finished before the interruption; its record is in ``records``
        unfrozen = resolve_unfreeze(phase.unfreeze, group_names, f"phases.{i}.unfreeze")
        set_trainable(parts.backbone, parts.groups, unfrozen, phase.batchnorm)
        use_cache = phase.cache_features is not False and not unfrozen
        mults = group_multipliers(parts.groups, unfrozen, phase.lr_decay, phase.group_lr)
        by_var = {id(v): mults[g] for g in unfrozen for layer in parts.groups[g] for v in layer.trainable_weights}
        rate = learning_rate_schedule(phase.learning_rate, phase.schedule, steps_per_epoch * phase.epochs, phase.warmup)
        optimizer = make_optimizer(recipe.optimizer, rate, by_var)
        record = {
            "name": phase.name, "epochs_planned": phase.epochs, "learning_rate": phase.learning_rate,
            "unfrozen_groups": unfrozen, "group_lr": {g: phase.learning_rate * m for g, m in mults.items()},
            "batchnorm": phase.batchnorm, "feature_cache": bool(use_cache), "schedule": phase.schedule,
            "warmup": phase.warmup, "trainable_params": 0, "epochs_run": 0, "seconds": 0.0,
        }
        if phase.epochs == 0:
            records.append(record)
            continue
        resumed = resume.get("cut_cache", False) if resuming and resume["epoch"] else None  # how it ran
        cut, cut_record = cut_cache.plan(parts, task, phase, unfrozen, resumed) if unfrozen else (None, None)
        if resuming and (use_cache or cut is not None):
            checkpoints.restore_weights(run_dir, parts)  # before the cache reads the backbone
        if use_cache:
            if cache is None:
                verbose = _verbosity(recipe)
                if verbose:  # minutes on a CPU for thousands of images: say what is happening
                    print(f"Backbone features for the frozen phase: {len(train)} training and {len(val)} "
                          "validation examples", flush=True)
                features, info = frozen_features(parts.feature_model(), (train, val), recipe, verbose,
                                                 local=workers.several)
                cache = tuple(features)
                record["cache_seconds"] = info["seconds"]
                record["cache_hits"] = info["hits"]
                if verbose:
                    print(f"Features ready in {info['seconds']:.1f} s", flush=True)
            model, x_train, x_val = parts.head, cache[0], cache[1]
        else:  # on the cached cut below the unfrozen groups, or end to end
            model, x_train, x_val = cut_cache.phase_model(cut, cut_record, parts, (train, val), recipe, phase.name,
                                                          _verbosity(recipe), workers.several, bool(unfrozen))
            record.update({"cut_cache": cut_record} if cut_record else {})
        if resuming and not use_cache:
            checkpoints.restore_weights(run_dir, parts)
        prepare(model, workers).compile(optimizer=optimizer, **task.compile_args())
        record["trainable_params"] = int(sum(np.prod(v.shape) for v in model.trainable_weights))
        initial = int(resume["epoch"]) if resuming else 0
        epoch0 = sum(r["epochs_run"] for r in records)
        for callback in callbacks:  # a tracker labels the epochs of this phase
            getattr(callback, "begin_phase", lambda *_: None)(phase.name, epoch0)
        if resuming and initial:
            checkpoints.restore_optimizer(run_dir, optimizer, model.trainable_variables)
        val_ds = workers.feed(lambda b: make_dataset(x_val, task.targets(val), b), batch) if len(val) else None
        phase_callbacks = list(callbacks)
        es = None
        if es_config.enabled and val_ds is not None:
            patience = phase.patience if phase.patience is not None else es_config.patience
            es = checkpoints.ResumableEarlyStopping(
                monitor=es_config.monitor, patience=int(patience), restore_best_weights=es_config.restore_best_weights,
                restored=resume.get("early_stopping") if resuming else None,
                restored_weights=checkpoints.best_weights(run_dir) if resuming else None)
            phase_callbacks.append(es)
        if recipe.callbacks.tensorboard and run_dir is not None:
            phase_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs" / phase.name)))
        phase_callbacks.append(checkpoints.EpochCheckpoint(run_dir, i, phase.name, epoch0, history, records, parts, es,
                                                           {"cut_cache": bool(cut_record and cut_record["used"])}))
        if resuming and resume.get("phase_done"):  # early stopping had ended it: keep its best epoch
            best = checkpoints.best_weights(run_dir)
            if best is not None and es_config.restore_best_weights:
                model.set_weights(best)
        elif initial < phase.epochs:
            def epochs_of(b, seed=recipe.seed + 1000 * i,
                          augment=None if x_train is not train.x else parts.augment_pairs):  # cached: none
                ds = make_epoch_dataset(x_train, task.targets(train), b, seed=seed, epochs=phase.epochs, initial_epoch=initial,
                                        augment=augment)
                return with_class_weights(ds, class_weight) if workers.several else ds

            model.fit(workers.feed(epochs_of, batch, repeat=True), validation_data=val_ds, epochs=phase.epochs,
                      initial_epoch=initial, steps_per_epoch=steps_per_epoch,
                      class_weight=None if workers.several else class_weight, shuffle=False,
                      callbacks=phase_callbacks, verbose=_verbosity(recipe))
        record["epochs_run"] = sum(1 for r in history if r["phase"] == phase.name)
        if unfrozen:
            cache = None  # the backbone changed: features must be recomputed
        record["seconds"] = time.perf_counter() - start
        records.append(record)
        if run_dir is not None:  # between phases: the next one starts from here
            checkpoints.save(run_dir, {"phase": i + 1, "epoch": 0, "phase_done": False, "history": history,
                                       "records": records, "early_stopping": None}, parts)
    if resume is not None and resume["phase"] >= len(recipe.phases):
        checkpoints.restore_weights(run_dir, parts)  # every phase had finished: its weights
    return history, records


class RunInterrupted(TlmultiError):
    """Training stopped by Ctrl-C or SIGTERM; the run folder is kept and can be resumed."""


def workers_for(recipe: Recipe) -> Workers:
    """This process's place among the workers of the recipe's ``distribute``. A multi-worker
    strategy starts here, so call it before any other TensorFlow work. Domain adaptation runs on
    one worker."""
    place = place_of(recipe.distribute)
    if place.several and recipe.tune.trials:
        raise RecipeError("--tune searches on one worker: set tune.trials: 0 with distribute: multi_worker (tune "
                          "on one machine first and train its saved recipe).")
    if place.several and recipe.adaptation.method != "none":
        raise RecipeError("Domain adaptation runs on one worker: set adaptation.method: none with "
                          "distribute: multi_worker, or train on one machine (distribute: mirrored for its GPUs).")
    return place


def train_on(recipe: Recipe, place: Workers, out=None) -> Run:
    """Train ``recipe`` end to end as this process's ``place`` (:func:`workers_for`) and write the
    run folder (never overwriting one); the recipe's backbone must be available.

    A failure before the first epoch leaves nothing behind; after it, the folder is kept with
    status ``failed`` (or ``interrupted`` for Ctrl-C / SIGTERM, raised as
    :class:`RunInterrupted`) and ``tlmulti resume`` continues it from its last checkpoint."""
    import shutil
    import tempfile

    if place.chief:
        run_dir = runs.create_run_dir(out or recipe.output.dir, recipe.name)
        return _guarded(run_dir, lambda: _train_into(recipe, run_dir, place=place))
    scratch = Path(tempfile.mkdtemp(prefix=f"tlmulti-worker{place.index}-"))  # the chief writes the run folder
    try:
        return _train_into(recipe, runs.create_run_dir(scratch, recipe.name), place=place)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resume(run_dir, trust: bool = False) -> Run:
    """Continue an interrupted or failed run from its last checkpoint, in the same folder; it
    ends with the metrics the uninterrupted run would have had. A run stopped while tuning
    continues its study (``tune.db``) with the trials it lacks.

    The recipe comes from the run folder, not from the user, so a SavedModel its backbone names
    (``backbone.weights``) must pass :func:`tlmulti.backbones._saved_model.check_trusted`, unless
    ``trust`` (``--trust``)."""
    from tlmulti.backbones._saved_model import (
        checking_saved_models,
        trusting_saved_models,
    )
    from tlmulti.recipe import load_recipe
    from tlmulti.training import checkpoints

    run_dir = Path(run_dir)
    saved = run_dir / "recipe.yaml"
    if saved.is_file() and load_recipe(saved).distribute == "multi_worker":
        raise RunError(f"'{run_dir}' was trained by several workers, which keep no checkpoint of their own; "
                       "start the run again on every worker instead of resuming it.")
    runs.take_over(run_dir)
    recipe = load_recipe(saved)
    tuning = recipe.tune.trials and not (run_dir / checkpoints.FOLDER / "state.json").exists()
    state = None if tuning else checkpoints.load_state(run_dir)  # None: the study continues from tune.db
    runs.set_status(run_dir, "running", resumed=time.strftime("%Y-%m-%dT%H:%M:%S"))
    with trusting_saved_models() if trust else checking_saved_models():
        return _guarded(run_dir, lambda: _train_into(recipe, run_dir, resume=state))


def _guarded(run_dir: Path, body) -> Run:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        return body()
    except KeyboardInterrupt:
        if not runs.started(run_dir):
            runs.discard(run_dir)
            raise RunInterrupted("Interrupted before the first epoch; nothing was kept.") from None
        try:
            runs.set_status(run_dir, "interrupted", ended=stamp)
        except OSError:  # a full disk: it stays "running", which resume takes over once this exits
            pass
        runs.release(run_dir)
        raise RunInterrupted(f"Interrupted. The run is kept in '{run_dir}' with its last checkpoint; continue it "
                             f"with 'tlmulti resume {run_dir}'.") from None
    except BaseException as exc:
        from tlmulti import paths

        full = paths.is_disk_full(exc) and not isinstance(exc, TlmultiError)
        if not runs.started(run_dir):
            runs.discard(run_dir)
            if full:
                raise paths.disk_full(run_dir, "the run folder", "free some space and start the run again "
                                      "(nothing was trained yet)") from None
            raise
        if full:  # a raw ENOSPC / EDQUOT from a write: one line naming the disk
            exc = paths.disk_full(run_dir, "the run folder", f"free some space and run 'tlmulti resume {run_dir}' "
                                  "to continue from the last checkpoint")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        try:
            runs.set_status(run_dir, "failed", ended=stamp, error=f"{type(exc).__name__}: {first}")
        except OSError:  # no room even for run.json: it stays "running", which resume takes over once this exits
            pass
        runs.release(run_dir)
        if full:
            raise exc from None
        raise


def _train_into(recipe: Recipe, run_dir: Path, resume: dict | None = None, place: Workers = Workers()) -> Run:
    """The run under the recipe's ``precision`` (Keras dtype policy), restored afterwards. Output
    layers stay float32, and Keras scales the loss under ``mixed_float16``."""
    import keras

    from tlmulti.training.tracking import session

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(recipe.precision)
    try:
        with session(recipe.tracking, chief=place.chief) as tracker:
            return _run(recipe, run_dir, resume, place, tracker)
    finally:
        keras.config.set_dtype_policy(previous)


def _run(recipe: Recipe, run_dir: Path, resume: dict | None, place: Workers, tracker) -> Run:
    import keras

    from tlmulti.reports.model_card import to_markdown
    from tlmulti.training.adaptation import adapt, check_adaptation
    from tlmulti.training.card import check_lock, model_card, run_card

    t_start = time.perf_counter()
    if recipe.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(recipe.seed)
    recipe = runs.absolute_paths(recipe)  # a copy: values derived from the data go into it
    from tlmulti.training.search import choose  # the chosen recipe is saved with strategy: fixed, tune.trials: 0

    recipe, strategy_record, tune_record = choose(recipe, run_dir, resume, place.several,
                                                  (fine_tune, derive_phase_lengths))
    keras.utils.set_random_seed(recipe.seed)
    task = make_task(recipe)
    task.derive_defaults()
    train_ex, val_ex, test_ex = task.load_splits()
    task.classes = train_ex.classes
    task.check_decision(train_ex.classes)  # data.positive_class / data.threshold, before any training
    if recipe.backbone.weights_lock:
        check_lock(recipe.backbone.weights_lock, task.spec, recipe.backbone.weights)
    strategy = place.strategy or get_strategy(recipe.distribute)
    with strategy.scope():
        parts = task.build(train_ex.classes)
        summary = summarize({"train": train_ex, "val": val_ex, "test": test_ex},
                            inputs=task.input_summary(train_ex, parts))
        print(format_summary(summary), flush=True)
        check_adaptation(recipe, task, parts)
        derive_phase_lengths(recipe, len(train_ex), task.phase_steps)
        if resume is None:
            runs.begin_run(run_dir, recipe, task, train_ex.classes, summary,
                           run_card(recipe, task.spec, {"train": train_ex, "val": val_ex, "test": test_ex}))
            runs.write_splits(run_dir, {"train": train_ex, "val": val_ex, "test": test_ex})
        tracker.begin(recipe, run_dir)
        history, records = fine_tune(parts, task, train_ex, val_ex, recipe, run_dir, resume=resume, workers=place,
                                     callbacks=tracker.callbacks())
        t_adapt = time.perf_counter()
        if recipe.adaptation.method != "none":  # kept beside the adapted model, for evaluate --compare source-only
            runs.save_model(parts.assemble(backbone_training=False, augment=True), run_dir / runs.SOURCE_ONLY_MODEL)
        adaptation = adapt(parts, task, train_ex, val_ex, recipe, verbose=_verbosity(recipe))
        if adaptation is not None:
            adaptation["seconds"] = round(time.perf_counter() - t_adapt, 3)
        model = prepare(parts.assemble(backbone_training=False, augment=True), place)  # predicts on this worker
    train_seconds = time.perf_counter() - t_start
    if not place.chief:
        print(f"Worker {place.index} of {place.count} finished training; the chief writes the run folder.", flush=True)
        return Run(dir=None, metrics={"worker": place.index, "workers": place.count}, model=model, history=history,
                   task=task, recipe=recipe)
    calibration = uncalibrated = None
    if recipe.calibration == "temperature" and task.calibratable:
        from tlmulti.training.calibration import calibrate

        model, calibration, uncalibrated = calibrate(model, task, val_ex, test_ex)
    metrics = {"val": task.evaluate(model, val_ex) if len(val_ex) else {}, "test": {}}
    task.choose_threshold(metrics["val"])  # sensitivity / specificity of the test set at the validation threshold
    if test_ex is not None:
        metrics["test"] = task.evaluate(model, test_ex)
        if uncalibrated is not None:  # the reliability diagram's "before" points
            metrics["test"]["uncalibrated"] = uncalibrated
    if calibration is not None:
        metrics["calibration"] = calibration
    if recipe.baseline:
        from tlmulti.training.baseline import beats_model, run_baseline

        baseline = run_baseline(task, train_ex, val_ex, test_ex, recipe.seed)
        if baseline is not None:
            metrics["baseline"] = baseline
            warning = beats_model(metrics, task.primary_metric, bool(strategy_record or tune_record))
            if warning:
                import sys

                print(f"warning: {warning}", file=sys.stderr, flush=True)
    metrics["timing"] = {
        "phase_seconds": [round(r["seconds"], 3) for r in records],
        "train_seconds": round(train_seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
    }
    metrics["phases"] = records
    if adaptation is not None:
        metrics["adaptation"] = adaptation
    if strategy_record is not None:
        metrics["strategy"] = strategy_record
    if tune_record is not None:
        metrics["tune"] = tune_record
    metrics["data"] = {"train": len(train_ex), "val": len(val_ex), "test": len(test_ex) if test_ex else 0,
                       "classes": len(train_ex.classes)}
    if test_ex is not None and recipe.output.plots:
        task.report(run_dir, model, test_ex, metrics["test"])
    card = model_card(run_dir, recipe, task, metrics, summary)  # MODEL_CARD.md and a section of report.html
    if recipe.output.plots:
        from tlmulti.reports.html import write_report

        shown = test_ex if test_ex is not None else val_ex
        write_report(run_dir, title=f"{recipe.name}: {recipe.task} with {recipe.backbone.name}",
                     headline=task.headline(metrics), task=recipe.task, metrics=metrics, history=history,
                     summary=summary, examples=task.worst_examples(model, shown) if len(shown) else [],
                     classes=train_ex.classes, view=task.report_view, card=card)
    runs.finish_run(run_dir, recipe, model, metrics, history, card=to_markdown(card), threshold=task.threshold)
    tracker.finish(run_dir, metrics, model)
    return Run(dir=run_dir, metrics=metrics, model=model, history=history, task=task, recipe=recipe)
