"""``strategy: auto``: the fine-tuning strategy chosen on the user's validation split.

Before the final training, candidate strategies are trained on the training split and scored on
the validation split with the task's headline metric (accuracy, macro AUROC, ...). The search is
greedy, cheapest first, and each step changes one thing from the best so far:

1. the frozen probe (the recipe's frozen phases only) and the recipe's own fine-tuning phase;
2. **input size** (images): where the training images' median side is under a third of the
   network's, the network at four and at two times that side (at least ``MIN_SIDE``, 96 px:
   three times the coarsest stride of the usual backbones, so the last feature map keeps 3 x 3);
   first, because a smaller input makes every later candidate cheaper; for text, the training
   texts' 95th-percentile token count (rounded up to 16) where that is at most two thirds of the
   sequence length;
3. **depth**: every group unfrozen with discriminative rates (``all``: the recipe's fine-tuning
   rate for the top group, ``lr_decay`` 0.5 below); one frozen head training is shared by every
   depth at one input size, each candidate continues from it;
4. **rate**: the better depth at ten times its rate (skipped when the probe wins); depth and rate
   interact with input size (a small image blown up less is further from what the backbone saw, and
   only deeper or faster fine-tuning adapts to it), so where smaller image inputs were tried, steps
   3 and 4 run first on the smallest (the cheapest build), whether or not it won at the recipe's
   depth, and there each depth at ten times its rate (four short runs at 96 px cost about one at
   224); then on the best input if that is another; where the smallest input wins with changed
   phases, the larger inputs are tried again with those phases (on their kept builds);
5. **flips** off, when the recipe flips (orientation may carry the label: digits, laterality);
6. **pooling** ``max`` instead of ``avg`` (small local findings), for images;
7. the task's own variants (:meth:`~tlmulti.tasks.base.Task.strategy_variants`): for segmentation
   the input image as a full-resolution skip of the decoder (``head.image_skip``).

Fine-tuning candidates run ``FRACTION`` of their phase's epochs (at least one) with the phase's
early stopping; frozen phases read the disk feature cache. A plain run is estimated from the first
candidates: the time to read the data, build the model, train the frozen phase and score it, plus
the recipe's fine-tuning phase at full length: the short run's seconds, and each epoch it did not
run at its median epoch after the first (:func:`full_length`; the cut cache's features and tracing
the model are paid once in a run, not once per epoch). A candidate starts only when the time spent
so far, its expected cost (a short run as long as the last of its depth on its input; on another
input, scaled by the pixels) and the final training stay within ``strategy_budget`` plain runs. The
final training is counted as the costliest of a plain run, the best candidate's full run and the
candidate's own full run should it win (its build and its cost stretched as the recipe's short run
was to full length), so no late winner takes the run past the budget. Skipped candidates are listed
as such. A candidate must beat the best so far by more than chance to replace it (:func:`leads`):
on accuracy, of the validation examples the two disagree on, it must get right so many more that
luck would give such a split less often than one standard error allows (``CHANCE``, exact sign
test); on other metrics it must be higher by more than ``MARGIN``. Ties keep the recipe as written.

The chosen candidate's changes are written into the saved ``recipe.yaml`` with ``strategy:
fixed``, so ``tlmulti run RUN/recipe.yaml`` reproduces the run without searching; every
candidate's validation metric and seconds go to ``metrics.json`` (``strategy``) and the report.
"""

from __future__ import annotations

import copy
import math
import sys
import time

import numpy as np

from tlmulti.errors import RecipeError
from tlmulti.overrides import apply_overrides
from tlmulti.recipe import Recipe, from_dict
from tlmulti.tasks import make_task
from tlmulti.training.budget import epoch_clock, fits, full_length

FRACTION = 0.5  # share of a fine-tuning phase's epochs a candidate runs
MARGIN = 0.002  # how much a candidate must beat the best so far by to replace it (other than accuracy)
CHANCE = 0.1587  # on accuracy, the largest chance of its lead by luck a candidate may have: one standard error
RATE_FACTOR = 10.0
MIN_SIDE = 96  # smallest input tried: three times the coarsest stride (32) of the usual backbones


def _depth(phases) -> str:
    """The groups the last of ``phases`` unfreezes, as a key: candidates of one depth on one build
    cost about the same whatever their rate."""
    return str(phases[-1].unfreeze)


def _frozen(phase) -> bool:
    return phase.unfreeze in ("none", "", [], "top:0")


def _with(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of ``recipe`` with ``overrides`` (``key=value``) applied and validated."""
    out = from_dict(apply_overrides(recipe.to_dict(), overrides), source=recipe.source)
    out.callbacks.verbose = recipe.callbacks.verbose
    return out


class _Build:
    """The data and model of one input size, pooling and augmentation: the frozen phases trained
    once, then any fine-tuning phase from their weights."""

    def __init__(self, recipe: Recipe, metric: str | None, trainer, callbacks=()):
        import keras

        t_build = time.perf_counter()
        fine_tune, derive_phase_lengths = trainer
        self.recipe, self.fine_tune = recipe, fine_tune
        keras.utils.set_random_seed(recipe.seed)
        self.task = make_task(recipe)
        self.task.derive_defaults()
        self.train, self.val, _ = self.task.load_splits()
        self.task.classes = self.train.classes
        self.metric = metric or self.task.primary_metric or self.task.guard_metric()
        self.parts = self.task.build(self.train.classes)
        preflight(recipe, self.task, self.parts, self.train.classes)
        derive_phase_lengths(recipe, len(self.train), self.task.phase_steps)
        frozen = copy.deepcopy(recipe)
        frozen.phases = [p for p in recipe.phases if _frozen(p)]
        t0 = time.perf_counter()
        if frozen.phases:
            fine_tune(self.parts, self.task, self.train, self.val, frozen, callbacks=callbacks)
        self.head_seconds = time.perf_counter() - t0
        self.start = self._model().get_weights()
        self.probe = self.score()
        self.seconds = time.perf_counter() - t_build  # reading, building, the frozen phases, scoring

    def _model(self):
        return self.parts.assemble(backbone_training=False, augment=False)

    def score(self) -> float:
        """The validation metric; for accuracy, ``self.correct`` also says which examples are right."""
        model, self.correct = self._model(), None
        if self.metric == "accuracy" and hasattr(self.task, "metrics_from"):
            probs = self.task.probabilities(model, self.val.x)
            self.correct = np.asarray(probs).argmax(axis=1) == np.asarray(self.val.y)
            return float(self.task.metrics_from(probs, self.val)[self.metric])
        return float(self.task.evaluate(model, self.val)[self.metric])

    def tune(self, phases, fraction: float = None, callbacks=()) -> tuple[float, float]:
        """(validation metric, seconds) after ``phases`` (fine-tuning) from the frozen weights,
        each run for ``fraction`` (default ``FRACTION``) of its epochs. ``self.full_seconds``: the
        same phases' estimated seconds at full length (:func:`full_length`)."""
        import keras

        model = self._model()
        model.set_weights(self.start)
        keras.utils.set_random_seed(self.recipe.seed)
        short = copy.deepcopy(self.recipe)
        short.phases = copy.deepcopy(phases)
        for p in short.phases:
            p.epochs = max(1, math.ceil(int(p.epochs) * (FRACTION if fraction is None else fraction)))
        clock = epoch_clock()
        t0 = time.perf_counter()
        self.fine_tune(self.parts, self.task, self.train, self.val, short, callbacks=[*callbacks, clock])
        value, seconds = self.score(), time.perf_counter() - t0
        self.full_seconds = full_length(seconds, [int(p.epochs) for p in phases], clock.phases)
        return value, seconds


def preflight(recipe: Recipe, task, parts, classes) -> None:
    """The run's checks of the recipe against its data and model, made before the first candidate
    trains, so a mistake stops the run at once rather than after a search."""
    from tlmulti.training.adaptation import check_adaptation
    from tlmulti.training.card import check_lock

    task.check_decision(classes)
    if recipe.backbone.weights_lock:
        check_lock(recipe.backbone.weights_lock, task.spec, recipe.backbone.weights)
    check_adaptation(recipe, task, parts)


def _native_side(task, train) -> int | None:
    """Median longer side of the training images (None for other inputs)."""
    from tlmulti.data.images import image_info

    paths = train.meta.get("path")
    if not paths:
        return None
    sides = [max(int(v) for v in k.split("x")) for k, n in image_info(paths, limit=500)["sizes"].items()
             for _ in range(n)]
    return int(np.median(sides)) if sides else None


def smaller_sides(task, train) -> list[int]:
    """Input sides below the network's to try for small images: 4x and 2x their median side (at
    least ``MIN_SIDE``), largest first; none when the images are not under a third of it."""
    contract = max(task.image_size())
    side = _native_side(task, train)
    if not side or side * 3 > contract:
        return []
    return [s for s in sorted({max(MIN_SIDE, -(-side * k // 8) * 8) for k in (4, 2)}, reverse=True) if s < contract]


NO_FROZEN_PHASE = "the recipe has no frozen head phase (unfreeze: none) for the candidates to start from"


def check(recipe: Recipe) -> None:
    """Before any reading: a search needs a validation split and a frozen phase to start from."""
    if not any(_frozen(p) and p.epochs for p in recipe.phases):
        raise RecipeError("strategy: auto and --tune start from a frozen head phase, and the recipe has none; add "
                          "a phase with unfreeze: none first, or set strategy: fixed and tune.trials: 0.")
    if getattr(recipe.data, "val_split", 0) <= 0 and not getattr(recipe.data, "val", None):
        raise RecipeError("strategy: auto and --tune compare candidates on validation data; set data.val_split "
                          "(e.g. 0.2) or data.val, or set strategy: fixed and tune.trials: 0.")


def search(recipe: Recipe, trainer, out=None) -> tuple[Recipe, dict]:
    """The recipe to train (the best candidate's, ``strategy: fixed``) and the search record;
    ``trainer``: the trainer's ``(fine_tune, derive_phase_lengths)``; ``out``: where the table goes
    (standard output at call time by default)."""
    import tensorflow as tf

    out = out or sys.stdout
    if not any(_frozen(p) and p.epochs for p in recipe.phases):  # the default asked for it, the phases cannot
        print(f"strategy: auto: {NO_FROZEN_PHASE}; training the phases as written.", file=out, flush=True)
        return as_written(recipe), None
    check(recipe)
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # each candidate's new model retraces predict: TensorFlow's warning is noise here
    try:
        return _search(recipe, trainer, out)
    finally:
        logger.setLevel(level)


def as_written(recipe: Recipe) -> Recipe:
    """``recipe`` to train without a search: its phases as written, saved with ``strategy: fixed``."""
    fixed = copy.deepcopy(recipe)
    fixed.strategy = "fixed"
    return fixed


def _search(recipe: Recipe, trainer, out) -> tuple[Recipe, dict]:
    t_start = time.perf_counter()
    base = copy.deepcopy(recipe)
    base.strategy, base.callbacks.verbose = "fixed", 0
    build = _Build(base, None, trainer)
    metric, rows = build.metric, []
    margin = max(MARGIN, 1.0 / max(1, len(build.val))) if metric == "accuracy" else MARGIN

    def record(name, changes, value, seconds):
        rows.append({"name": name, "changes": list(changes), "val": round(value, 6), "seconds": round(seconds, 2)})
        print(f"  {name:<30} val {metric} {value:.4f}  ({seconds:.1f} s)", file=out, flush=True)

    def better(candidate, than) -> bool:
        """:func:`leads`, with the counts of the examples the two disagree on in the candidate's row."""
        won = leads(candidate, than, margin)
        if candidate.paired:
            next((r for r in reversed(rows) if r["name"] == candidate.name), {})["paired"] = candidate.paired
        return won

    def skipped(name, changes):
        rows.append({"name": name, "changes": list(changes), "skipped": "time budget"})
        print(f"  {name:<30} skipped: time budget", file=out, flush=True)

    print(f"Strategy search on the validation split ({len(build.val)} examples, {metric}), at most "
          f"{recipe.strategy_budget:g}x a plain run:", file=out, flush=True)
    frozen_names = [p.name for p in base.phases if _frozen(p)]
    probe = _Candidate("probe (frozen backbone)", [f"frozen phases only: {', '.join(frozen_names)}"], build.probe,
                       where=build)
    probe.correct = build.correct
    record(probe.name, probe.changes, probe.val, build.head_seconds)
    tuning = [p for p in base.phases if not _frozen(p) and p.epochs]
    build_seconds = time.perf_counter() - t_start  # reading, building, the frozen phase, scoring
    tune_seconds, best = 0.0, probe

    final = {"seconds": None}  # the chosen candidate's full run, once one beats the recipe as written
    plain, stretch = build_seconds, 1.0  # a plain run: the build, then the recipe's fine-tuning at full length

    def affordable(cost: float, full: float) -> bool:
        """Whether a candidate costing about ``cost`` seconds fits in the budget with the final
        training after it: a plain run, the best candidate's full run, or ``full``, the candidate's
        own full run should it win, whichever costs most."""
        held = max(final["seconds"] or 0.0, full)
        return fits(time.perf_counter() - t_start, cost, plain, held, recipe.strategy_budget)

    def attempt(candidate: _Candidate, cost: float) -> None:
        """Fine-tune ``candidate`` on its build if about ``cost`` seconds fit the budget; it becomes
        the best when it beats it by the margin (its full run is then held back)."""
        nonlocal best
        b = candidate.where
        if not affordable(cost, b.seconds + cost * stretch):
            skipped(candidate.name, candidate.changes)
            return
        candidate.val, candidate.seconds = b.tune(candidate.phases)
        candidate.correct = b.correct
        candidate.full_seconds, b.step = b.full_seconds, candidate.seconds
        b.costs[_depth(candidate.phases)] = candidate.seconds
        record(candidate.name, candidate.changes, candidate.val, candidate.seconds)
        if better(candidate, best):
            best = candidate
            final["seconds"] = b.seconds + candidate.full_seconds

    if tuning:
        written = _Candidate("as written", [], None, tuning, where=build, tuned="as written")
        written.val, tune_seconds = build.tune(tuning)
        written.seconds, written.full_seconds = tune_seconds, build.full_seconds
        plain, stretch = plain + written.full_seconds, max(1.0, written.full_seconds / max(tune_seconds, 1e-9))
        record(written.name, [], written.val, tune_seconds)
        written.correct = build.correct
        best = probe if better(probe, written) else written
    build.step, build.local = tune_seconds, best
    build.costs = {_depth(tuning): tune_seconds} if tuning else {}
    build.size_overrides, build.scale = [], 1.0  # the contract's size: named only where sizes are revisited
    build.size_name = f"input {max(build.task.image_size())} px" if build.task.strategy_inputs else None

    def rebuilt(name, overrides, cost, start):
        """``start`` with ``overrides`` on a new build (None when the budget skips it); the build's
        candidate is its ``local``, and becomes the best when it beats it."""
        nonlocal best
        label, changes = f"{start.name}; {name}", [*start.changes, *overrides]
        if not affordable(cost, cost * stretch):
            skipped(label, changes)
            return None
        other = _Build(_with(base, start.overrides + overrides), metric, trainer)
        local = _Candidate(label, changes, other.probe, start.phases, start.overrides + overrides, where=other,
                           tuned=start.tuned, phase_changes=start.phase_changes)
        local.seconds, local.full_seconds, local.correct = 0.0, 0.0, other.correct  # the new build's probe
        if start.phases is not None:
            local.val, local.seconds = other.tune(start.phases)
            local.full_seconds, local.correct = other.full_seconds, other.correct
        other.step, other.local = local.seconds or start.where.step, local
        other.costs = {_depth(start.phases): local.seconds} if start.phases is not None else {}
        record(label, changes, local.val, other.head_seconds + local.seconds)
        if better(local, best):
            best = local
            final["seconds"] = other.seconds + local.full_seconds
        return other

    def deepen(b, grid: bool = False) -> None:
        """The depth and rate steps on build ``b``, from its own best candidate; with ``grid``,
        each depth at ten times its rate (where short runs are cheap), else the better one."""
        local = b.local
        keep = [c for c in local.changes if not c.startswith("frozen phases only")]
        prefix = "" if b is build else f"{b.size_name}; " if local.phases is None else f"{local.name}; "
        everything = copy.deepcopy(tuning)
        everything[-1].unfreeze, everything[-1].lr_decay = "all", 0.5
        depth = _Candidate(f"{prefix}all groups", [*keep, "unfreeze: all", "lr_decay: 0.5"], None, everything,
                           local.overrides, where=b, tuned="all groups", phase_changes=["unfreeze: all", "lr_decay: 0.5"])
        attempt(depth, b.costs.get(_depth(depth.phases), b.step))
        tops = [local, depth] if grid else [depth if depth.val is not None and better(depth, local)
                                            else local]
        for top in tops:
            if top.phases is None or top.val is None:  # the probe wins, or the depth was skipped: no rate
                continue
            faster = copy.deepcopy(top.phases)
            faster[-1].learning_rate *= RATE_FACTOR
            change = f"learning_rate: {faster[-1].learning_rate:g}"
            attempt(_Candidate(f"{top.name}, rate x{RATE_FACTOR:g}", [*top.changes, change], None,
                               faster, top.overrides, where=b, tuned=f"{top.tuned}, rate x{RATE_FACTOR:g}",
                               phase_changes=[*top.phase_changes, change]), b.costs.get(_depth(faster), b.step))

    def revisit(b) -> None:
        """The best candidate's phases on another input size ``b`` (already built)."""
        cost = best.seconds * b.scale / best.where.scale  # the best's cost, scaled by the inputs' pixels
        attempt(_Candidate(f"{best.tuned}; {b.size_name}", [*best.phase_changes, *b.size_overrides], None,
                           best.phases, b.size_overrides, where=b, tuned=best.tuned,
                           phase_changes=best.phase_changes), cost)

    rebuilds = _rebuild_candidates(base, build)
    start, sized = best, []
    for name, overrides, scale in [c for c in rebuilds if c[2]]:  # input size first: it sets every later cost
        scale = min(1.0, scale)
        other = rebuilt(name, overrides, scale * (build_seconds + (tune_seconds if start.phases is not None else 0)),
                        start)
        if other is not None:
            other.size_name, other.size_overrides, other.scale = name, overrides, scale
            sized.append(other)
    if tuning:
        explore = sized[-1] if sized and build.task.strategy_inputs else None  # the smallest image input
        deepened = None
        if explore is not None and best.where is not explore:
            deepen(explore, grid=True)  # depth and rate interact with input size: tried where they cost least
            deepened = explore
        if best.where is not deepened:
            deepen(best.where)
        if explore is not None and best.where is explore and best.phases is not None and best.tuned != "as written":
            for b in [*reversed(sized[:-1]), build]:  # the larger inputs again, with the phases that won
                revisit(b)
    for name, overrides, scale in [c for c in rebuilds if not c[2]]:
        rebuilt(name, overrides, best.where.seconds + (best.seconds or 0.0), best)
    chosen = _final(recipe, best)
    seconds = time.perf_counter() - t_start
    print(f"Strategy: kept '{best.name}' (val {metric} {best.val:.4f}); search {seconds:.1f} s, "
          f"{seconds / plain:.1f}x the estimated plain run ({plain:.1f} s).", file=out, flush=True)
    compared = "paired examples" if build.correct is not None else "margin"  # see leads()
    return chosen, {"metric": metric, "margin": round(margin, 6), "compared": compared, "chosen": best.name,
                    "changes": best.changes, "val": round(best.val, 6),
                    "candidates": rows, "seconds": round(seconds, 2), "plain_estimate_seconds": round(plain, 2),
                    "budget": recipe.strategy_budget}


class _Candidate:
    """A strategy: its fine-tuning phases (None: the frozen probe) and recipe overrides, the build
    (input size, pooling, augmentation) it trains on, and ``tuned``: its phases in words, with
    ``phase_changes`` the changes of the phases alone."""

    def __init__(self, name: str, changes: list[str], val, phases=None, overrides=None, where=None,
                 tuned: str | None = None, phase_changes=()):
        self.name, self.changes, self.val, self.phases = name, changes, val, phases
        self.overrides = list(overrides or [])
        self.where, self.tuned, self.phase_changes, self.seconds = where, tuned, list(phase_changes), None
        self.full_seconds = None  # the phases' estimated seconds at full length
        self.correct = None  # accuracy: which validation examples it gets right (its build's, when scored)
        self.paired = None  # the last comparison on those examples (:func:`leads`)


def leads(candidate: _Candidate, best: _Candidate, margin: float) -> bool:
    """Whether ``candidate`` beats ``best`` on the validation split by more than chance. Where both
    know which examples they get right (accuracy), only the examples they disagree on count: the
    candidate must be right on more of them than ``best``, and a split at least as lopsided must
    have a chance under ``CHANCE`` if either were as likely to be right (the exact sign test of
    McNemar's comparison; one-sided, one standard error): 3 of 3, 5 of 6, 14 of 22. The more
    examples two candidates disagree on, the larger the lead noise can make. The counts are kept
    in ``candidate.paired``. Otherwise the metric must be higher by more than ``margin``."""
    mine, theirs = candidate.correct, best.correct
    if mine is not None and theirs is not None and len(mine) == len(theirs):
        wins, losses = int(np.sum(mine & ~theirs)), int(np.sum(~mine & theirs))
        n = wins + losses
        chance = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n
        candidate.paired = {"against": best.name, "wins": wins, "losses": losses, "chance": round(chance, 4)}
        return wins > losses and chance < CHANCE
    return candidate.val > best.val + margin


def _rebuild_candidates(base: Recipe, build: _Build) -> list[tuple[str, list[str], int | None]]:
    """Changes that need a new build: ``(name, overrides, cost scale or None)`` for smaller
    inputs (images: sides; text: the sequence length), then, for images, flips off and max pooling."""
    task = build.task
    variants = task.strategy_variants()
    if not task.strategy_inputs:
        return [(f"sequence {n} tokens", [f"data.sequence_length={n}"], n / task.sequence_length())
                for n in task.shorter_sequences(build.train, build.parts)] + variants
    pixels = float(np.prod(task.image_size()))
    out = [(f"input {s} px", [f"data.image_size=[{s}, {s}]"], s * s / pixels)
           for s in smaller_sides(task, build.train)]
    if getattr(base.data.augment, "flip", "none") != "none":
        out.append(("no flips", ["data.augment.flip=none"], None))
    if getattr(base.head, "pooling", None) == "avg":
        out.append(("max pooling", ["head.pooling=max"], None))
    return out + variants


def _final(recipe: Recipe, best: _Candidate) -> Recipe:
    """The recipe the final training runs: ``recipe`` with the chosen candidate's changes and
    its phases at their full length."""
    chosen = _with(recipe, best.overrides)
    chosen.strategy = "fixed"
    frozen = [copy.deepcopy(p) for p in recipe.phases if _frozen(p)]
    if best.phases is None:
        chosen.phases = frozen
        return chosen
    written = [p for p in recipe.phases if not _frozen(p) and p.epochs]
    tuned = [copy.deepcopy(p) for p in best.phases]
    for p, original in zip(tuned, written):
        p.epochs, p.patience = original.epochs, original.patience  # full length, not the candidate's share
    chosen.phases = frozen + tuned
    return chosen
