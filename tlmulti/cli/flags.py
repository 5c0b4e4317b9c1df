"""Command-line flags of the ``train`` commands: each one is an override of a recipe key,
declared once here and turned into ``--set``-style overrides by :func:`overrides_from_flags`.

Example::

    from tlmulti.cli.flags import TRAIN_FLAGS, overrides_from_flags
    overrides_from_flags({"epochs": 3, "batch_size": 16}, TRAIN_FLAGS)
    # ['phases.*.epochs=3', 'data.batch_size=16']

Values a flag refuses although its key takes them (``refuse``: ``--epochs 0``) are refused here;
an error about the key a flag set names the flag as typed (:func:`typed_flags`, passed to
:func:`tlmulti.recipe.load_recipe`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from tlmulti import registry
from tlmulti.errors import RecipeError
from tlmulti.recipe import resolve_path


@dataclass(frozen=True)
class Flag:
    """A command-line option that sets the recipe key ``key``.

    ``kind``: ``str``, ``int`` or ``float``; ``multiple``: repeatable, giving a list; ``path``: made
    absolute against the working directory; ``resets``: keys set to null (or ``[]``) when this
    flag is given and their own flag is not (``--data`` drops the recipe's own validation and
    test sets, which belong to the recipe's data); ``choices``: a tuple or a function returning
    one. ``key`` may use ``*`` for every list item (``phases.*.epochs``). ``refuse``: values the
    recipe key takes but the flag does not, each with the line that says why. ``constant``: what a
    bool flag writes (default true).
    """

    option: str
    key: str
    help: str
    kind: type = str
    multiple: bool = False
    path: bool = False
    resets: tuple[tuple[str, Any], ...] = ()
    choices: Any = None
    metavar: Optional[str] = None
    constant: Any = None
    refuse: tuple[tuple[Any, str], ...] = ()

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


TRAIN_FLAGS = (
    Flag("--data", "data.train", "Training data: a class-folder tree, a manifest, or dataset:NAME/SPLIT.",
         path=True, resets=(("data.val", None), ("data.test", None), ("data.holdout", []))),
    Flag("--val-data", "data.val", "Validation data (default: a seeded stratified split of --data).", path=True),
    Flag("--test-data", "data.test", "Test data, evaluated once after training.", path=True),
    Flag("--backbone", "backbone.name", "Registered backbone name (see 'tlmulti backbones list')."),
    Flag("--weights", "backbone.weights", "Local weights file or preset folder for the backbone.", path=True),
    Flag("--epochs", "phases.*.epochs", "Epochs of every phase (per phase: --set phases.N.epochs=E).", kind=int,
         refuse=((0, "--epochs 0 would train no phase at all and leave the run untrained; give 1 or more "
                     "(to skip one phase: --set phases.N.epochs=0)."),)),
    Flag("--batch-size", "data.batch_size", "Batch size.", kind=int),
    Flag("--adapt", "adaptation.method", "Unsupervised domain adaptation method (auto: try each, keep the best "
         "label-free target score).",
         choices=registry.adaptation_methods),
    Flag("--target-data", "adaptation.target_data", "Unlabelled target-domain data for --adapt.", path=True),
    Flag("--strategy", "strategy", "auto: compare fine-tuning depths, rates, input sizes, flips and pooling on the "
         "validation split first, then train the best (search and training within strategy_budget, default 5, "
         "plain runs); fixed: the recipe as written.",
         choices=("fixed", "auto")),
    Flag("--tune", "tune.trials", "Optuna trials before the final training (depth, rates, epochs, input size, "
         "flips, pooling, dropout, label smoothing, weight decay); the study is RUN/tune.db.", kind=int),
    Flag("--calibration", "calibration", "temperature: fit a temperature on the validation split so probabilities "
         "match frequencies (kept in the saved model and exports); none: as trained.",
         choices=("none", "temperature")),
    Flag("--track", "tracking.backend", "Log the run (parameters, per-epoch metrics, artifacts; nested runs for "
         "--strategy auto and --tune) to MLflow: $TLMULTI_HOME/mlflow.db unless tracking.uri names a server.",
         kind=bool, constant="mlflow"),
    Flag("--deterministic", "deterministic", "Identical results on a rerun (slower; TensorFlow op determinism).",
         kind=bool),
    Flag("--weights-lock", "backbone.weights_lock", "Refuse weights whose sha256 is not in this lockfile "
         "(made by 'tlmulti weights lock').", path=True),
    Flag("--holdout", "data.holdout", "Keep training examples with this manifest value out of training and score "
         "them with the test set, e.g. --holdout accent=en-029 (repeatable).", multiple=True,
         metavar="COLUMN=VALUE"),
    Flag("--split-by", "data.split_by", "Keep every value of this manifest column (e.g. patient) in one split; "
         "a value in both training and test data is an error.", metavar="COLUMN"),
)


def overrides_from_flags(values: dict, flags=TRAIN_FLAGS) -> list[str]:
    """``--set``-style overrides for the flags given in ``values`` (option dest -> value; None or
    an empty tuple means not given). Resets come first, so an explicit flag always wins. A value
    the flag refuses (``Flag.refuse``) is a :class:`~tlmulti.errors.RecipeError` saying why."""
    return [override for override, _ in _flag_overrides(values, flags)]


def typed_flags(values: dict, flags=TRAIN_FLAGS) -> dict[str, str]:
    """Each override of :func:`overrides_from_flags` -> the flag as the user typed it
    (``{"phases.*.epochs=-1": "--epochs -1"}``), for errors that name the flag."""
    return dict(_flag_overrides(values, flags))


def _typed(f: Flag, value) -> str:
    if f.kind is bool:
        return f.option
    return " ".join(f"{f.option} {v}" for v in (value if f.multiple else [value]))


def _flag_overrides(values: dict, flags) -> list[tuple[str, str]]:
    given = [f for f in flags if values.get(f.dest) not in (None, ())]
    given_keys = {f.key for f in given}
    out = []
    for f in given:
        for key, empty in f.resets:
            if key not in given_keys:
                out.append((f"{key}={json.dumps(empty)}", _typed(f, values[f.dest])))
    for f in given:
        value = values[f.dest]
        for refused, why in f.refuse:
            if value == refused:
                raise RecipeError(why)
        typed = _typed(f, value)
        if f.kind is bool and f.constant is not None:
            value = f.constant
        if f.multiple:
            value = [resolve_path(v) for v in value] if f.path else list(value)
        elif f.path:
            value = resolve_path(value)
        out.append((f"{f.key}={json.dumps(value) if isinstance(value, (str, list, bool)) else value}", typed))
    return out
