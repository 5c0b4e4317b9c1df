"""Shared pieces of the domain CLIs: error handling, and the train/evaluate/predict commands
that ``vision``, ``text`` and ``audio`` all get from :func:`domain_group`."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from tlmulti.errors import TlmultiError


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def user_errors(fn):
    """Report :class:`TlmultiError` as one line on stderr and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_tensorflow()
        try:
            return fn(*args, **kwargs)
        except TlmultiError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def recipe_from_cli(recipe_path, task, overrides, **flags):
    """Load ``recipe_path`` (or the task's default recipe) with flags turned into overrides."""
    from tlmulti.recipe import load_recipe, resolve_path

    sets = list(overrides or ())
    mapping = {
        "data": "data.train", "val_data": "data.val", "test_data": "data.test",
        "backbone": "backbone.name", "weights": "backbone.weights", "batch_size": "data.batch_size",
        "adapt": "adaptation.method", "target_data": "adaptation.target_data",
    }
    pre = []
    if task and not recipe_path:
        pre.append(f"task={task}")
    for key, dotted in mapping.items():
        value = flags.get(key)
        if value is None:
            continue
        if key in ("data", "val_data", "test_data", "weights", "target_data"):
            value = resolve_path(value)
        pre.append(f"{dotted}={json.dumps(value) if isinstance(value, str) else value}")
    if flags.get("holdout"):
        pre.append(f"data.holdout={json.dumps(list(flags['holdout']))}")
    elif flags.get("data") is not None:
        pre.append("data.holdout=[]")  # the recipe's holdout rules name groups of its own data
    if flags.get("data") is not None and flags.get("val_data") is None:
        pre.append("data.val=null")  # the recipe's own validation set belongs to its own data
    if flags.get("data") is not None and flags.get("test_data") is None:
        pre.append("data.test=null")
    recipe = load_recipe(recipe_path, overrides=pre + sets, task=task if not recipe_path else None)
    if task and recipe_path and recipe.task != task:
        recipe = load_recipe(recipe_path, overrides=pre + sets + [f"task={task}"])
    if flags.get("epochs") is not None:
        for phase in recipe.phases:
            phase.epochs = flags["epochs"]
    return recipe


def train_options(fn):
    opts = [
        click.argument("recipe", required=False, type=click.Path(dir_okay=False)),
        click.option("--data", help="Training data: a class-folder tree, a manifest, or dataset:NAME/SPLIT."),
        click.option("--val-data", help="Validation data (default: a seeded stratified split of --data)."),
        click.option("--test-data", help="Test data, evaluated once after training."),
        click.option("--backbone", help="Registered backbone name (see 'tlmulti backbones list')."),
        click.option("--weights", help="Local weights file or preset folder for the backbone."),
        click.option("--epochs", type=int, help="Epochs of every phase (per phase: --set phases.N.epochs=E)."),
        click.option("--batch-size", type=int, help="Batch size."),
        click.option("--adapt", type=click.Choice(["none", "adabn", "dann", "coral"]),
                     help="Unsupervised domain adaptation method."),
        click.option("--target-data", help="Unlabelled target-domain data for --adapt."),
        click.option("--holdout", multiple=True, metavar="COLUMN=VALUE",
                     help="Keep training examples with this manifest value out of training and score them "
                          "with the test set, e.g. --holdout accent=en-029 (repeatable)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a recipe value, e.g. --set phases.1.learning_rate=1e-5 (repeatable)."),
        click.option("--out", type=click.Path(file_okay=False), help="Run folder to create (never overwritten)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def run_training(recipe, out):
    """Train and print the run folder and the headline test metric."""
    from tlmulti.training import train
    from tlmulti.training.trainer import make_task

    run = train(recipe, out=out)
    click.echo(f"Run folder: {run.dir}")
    click.echo(make_task(recipe).headline(run.metrics))
    return run


def print_metrics(metrics: dict, as_json: bool, task=None) -> None:
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    if task is not None:
        click.echo(task.format_metrics(metrics))
    else:
        click.echo(json.dumps(metrics, indent=2))


def domain_group(name: str, help_text: str, default_task: str, task_choices=None, text_inputs: bool = False):
    """A Click group with ``train``, ``evaluate`` and ``predict`` for one domain."""

    @click.group(name=name, help=help_text)
    def group():
        pass

    task_option = (
        click.option("--task", type=click.Choice(task_choices), default=None,
                     help=f"Task (default: the recipe's, or {default_task}).")
        if task_choices else (lambda f: f)
    )

    @group.command("train")
    @train_options
    @task_option
    @user_errors
    def train_cmd(recipe, task=None, overrides=(), out=None, **flags):
        """Train on your data: frozen-backbone phase, then unfreeze phases, per the recipe.

        RECIPE is a YAML recipe; without it the task's default recipe is used and flags
        override its values.
        """
        chosen = task or (None if recipe else default_task)
        r = recipe_from_cli(recipe, chosen, overrides, **flags)
        run_training(r, out)

    @group.command("evaluate")
    @click.argument("run_dir", type=click.Path(file_okay=False))
    @click.option("--data", required=True, help="Labelled data to evaluate on.")
    @click.option("--group-by", help="Also report accuracy per value of this column, and the worst group.")
    @click.option("--compare", "compare_dir", type=click.Path(file_okay=False),
                  help="Another run folder to evaluate on the same data, side by side.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the 'test' section shape).")
    @user_errors
    def evaluate_cmd(run_dir, data, group_by, compare_dir, as_json):
        """Evaluate a trained run on labelled data."""
        from tlmulti.recipe import resolve_path
        from tlmulti.runs import load_run

        recipe, task, model = load_run(run_dir)
        examples = task.read(resolve_path(data), classes=task.classes)
        metrics = task.evaluate(model, examples, group_by=group_by)
        if compare_dir:
            _, other_task, other_model = load_run(compare_dir)
            other = other_task.evaluate(other_model, other_task.read(resolve_path(data), classes=other_task.classes),
                                        group_by=group_by)
            metrics = {"run": metrics, "compare": other, "run_dir": str(run_dir), "compare_dir": str(compare_dir)}
            if as_json:
                click.echo(json.dumps(metrics, indent=2))
            else:
                click.echo(f"== {run_dir}\n{task.format_metrics(metrics['run'])}\n")
                click.echo(f"== {compare_dir}\n{other_task.format_metrics(metrics['compare'])}")
            return
        print_metrics(metrics, as_json, task)

    predict_help = "Predict labels for files or folders." if not text_inputs else "Predict labels for texts."

    @group.command("predict", help=predict_help)
    @click.argument("run_dir", type=click.Path(file_okay=False))
    @click.argument("inputs", nargs=-1)
    @click.option("--file", "input_file", type=click.Path(dir_okay=False),
                  help="A file with one input per line." if text_inputs else "A file listing input paths, one per line.")
    @click.option("--top-k", type=int, default=3, show_default=True, help="How many labels per input.")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for outputs (segmentation masks).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @user_errors
    def predict_cmd(run_dir, inputs, input_file, top_k, out_dir, as_json):
        from pathlib import Path

        from tlmulti.runs import load_run

        items = list(inputs)
        if input_file:
            try:
                items += [l for l in Path(input_file).read_text(encoding="utf-8").splitlines() if l.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise TlmultiError(f"Cannot read --file '{input_file}': {exc}; give a UTF-8 text file.") from None
        if not items:
            raise TlmultiError("Nothing to predict: give inputs as arguments or --file.")
        recipe, task, model = load_run(run_dir)
        kwargs = {"out_dir": out_dir} if out_dir else {}
        results = task.predict(model, items, top_k=top_k, **kwargs)
        if as_json:
            click.echo(json.dumps(results, indent=2))
            return
        for r in results:
            click.echo(task.format_prediction(r))

    return group
