"""What a run trains: its recipe as written, the ``strategy: auto`` search's choice
(:mod:`tlmulti.training.strategy`) or the best ``--tune`` trial's (:mod:`tlmulti.training.tune`)."""

from __future__ import annotations

from tlmulti.recipe import Recipe
from tlmulti.training.strategy import as_written, search


def choose(recipe: Recipe, run_dir, resume, several: bool, trainer) -> tuple[Recipe, dict | None, dict | None]:
    """``(recipe to train, strategy record, tune record)`` before a run's training: the best
    ``--tune`` trial's recipe, the ``strategy: auto`` search's choice, or ``recipe`` itself (a
    resumed run, ``strategy: fixed``). With several workers (``distribute: multi_worker``) the
    search is skipped with one printed line: it compares candidates on one machine."""
    if resume is not None:
        return recipe, None, None
    if recipe.tune.trials:
        from tlmulti import runs
        from tlmulti.training.tune import tune

        runs.begin_tuning(run_dir, recipe)
        chosen, record = tune(recipe, run_dir, trainer)
        return chosen, None, record
    if recipe.strategy != "auto":
        return recipe, None, None
    if several:
        print("strategy: auto searches on one machine, and this run has several workers: training the phases "
              "as written (search on one machine first and train its saved recipe).", flush=True)
        return as_written(recipe), None, None
    return (*search(recipe, trainer), None)
