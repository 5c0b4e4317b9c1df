"""Shared pieces of the domain CLIs: error handling, and the train/evaluate/predict commands
that ``vision``, ``text`` and ``audio`` all get from :func:`domain_group`."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import json
import os
import signal
import sys

import click

from tlmulti.cli.flags import TRAIN_FLAGS, overrides_from_flags, typed_flags
from tlmulti.errors import TlmultiError


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for a while: TensorFlow's C++ start-up lines bypass Python."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Imports TensorFlow (and initialises its devices) with stderr silenced, the first time
    anything imports it, so its start-up log lines (oneDNN, CUDA probing) do not reach the user."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        with _stderr_silenced():
            tf = importlib.import_module("tensorflow")
            if not os.environ.get("TF_CONFIG"):  # a multi-worker strategy must configure the devices itself
                tf.config.list_logical_devices()
        return tf.__spec__


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up logging away from the user unless ``--verbose`` (or
    ``TLMULTI_VERBOSE=1``) asks for it."""
    if os.environ.get("TLMULTI_VERBOSE", "").lower() in ("1", "true", "yes"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def _terminate(signum, frame):
    raise KeyboardInterrupt


def user_errors(fn):
    """Report :class:`TlmultiError` as one line on stderr and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_tensorflow()
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminate)  # SIGTERM stops like Ctrl-C: the run is kept, resumable
        try:
            return fn(*args, **kwargs)
        except TlmultiError as exc:
            interrupted = type(exc).__name__ == "RunInterrupted"
            click.echo(str(exc) if interrupted else f"Error: {exc}", err=True)
            sys.exit(130 if interrupted else 2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def recipe_from_cli(recipe_path, task, overrides, flags=TRAIN_FLAGS, **values):
    """Load ``recipe_path`` (or the default recipe of ``task``) with the given flag ``values``
    turned into overrides (:func:`tlmulti.cli.flags.overrides_from_flags`), then ``--set`` ones.
    ``task`` given with a recipe file switches that recipe's task. An error about a key a flag set
    names the flag as typed (``--epochs -1``), one about a ``--set`` key that override."""
    from tlmulti.recipe import load_recipe

    sets = overrides_from_flags(values, flags)
    typed = {k: v for k, v in typed_flags(values, flags).items() if k not in (overrides or ())}
    if task and recipe_path:
        sets.insert(0, f"task={task}")
        typed[f"task={task}"] = f"--task {task}"
    return load_recipe(recipe_path, overrides=sets + list(overrides or ()), task=None if recipe_path else task,
                       typed=typed)


def received_recipe_rule(recipe_path, overrides):
    """A recipe inside a run folder (beside its run.json) is not the user's own: a SavedModel it
    names as ``backbone.weights`` loads only under the trust rule for model files (the weights
    store with a matching hash, or ``--trust``), unless the weights were given on this command
    line (``--weights``, ``--set backbone.weights=...``)."""
    from pathlib import Path

    from tlmulti.backbones._saved_model import checking_saved_models

    from_run = recipe_path is not None and (Path(recipe_path).resolve().parent / "run.json").is_file()
    own_weights = any(o.split("=", 1)[0].strip() == "backbone.weights" for o in overrides)
    return checking_saved_models() if from_run and not own_weights else contextlib.nullcontext()


def flag_option(flag):
    """The Click option of a recipe :class:`~tlmulti.cli.flags.Flag`."""
    if flag.kind is bool:
        return click.option(flag.option, flag.dest, is_flag=True, default=None, help=flag.help)
    values = flag.choices() if callable(flag.choices) else flag.choices
    kind = click.Choice(list(values)) if values else flag.kind
    return click.option(flag.option, flag.dest, type=kind, multiple=flag.multiple, metavar=flag.metavar,
                        help=flag.help)


def train_options(flags):
    """Decorator: the RECIPE argument, one option per flag, ``--set`` and ``--out``."""

    def decorate(fn):
        opts = [click.argument("recipe", required=False, type=click.Path(dir_okay=False))]
        opts += [flag_option(f) for f in flags]
        opts += [
            click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                         help="Override a recipe value, e.g. --set phases.1.learning_rate=1e-5 (repeatable)."),
            click.option("--out", type=click.Path(file_okay=False), help="Run folder to create (never overwritten)."),
        ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return decorate


def run_training(recipe, out):
    """Train and print the run folder and the run's headline metric."""
    from tlmulti.training import train

    run = train(recipe, out=out)
    if run.dir is not None:  # None on a worker that is not the chief of a multi-worker run
        click.echo(f"Run folder: {run.dir}")
        click.echo(run.headline)
    return run


def print_metrics(metrics: dict, as_json: bool, task=None) -> None:
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    if task is not None:
        click.echo(task.format_metrics(metrics))
    else:
        click.echo(json.dumps(metrics, indent=2))


def trust_option(fn):
    """``--trust``: let the run's model file or recipe load SavedModels outside the registry and
    the weights store (see :func:`tlmulti.backbones._saved_model.check_trusted`)."""

    @click.option("--trust", is_flag=True, help="Load SavedModels the run names even if they are not registered "
                  "or in the weights store (only for run folders you trust).")
    @functools.wraps(fn)
    def wrapper(*args, trust=False, **kwargs):
        if trust:
            os.environ["TLMULTI_TRUST"] = "1"
        return fn(*args, **kwargs)

    return wrapper


tta_option = click.option("--tta", is_flag=True, help="Test-time augmentation: average over the flips the run "
                          "trained with (maps and boxes flipped back); evaluate prints the metric with and without.")


def tta_axes(run_dir, recipe, task) -> list:
    """The flips of ``--tta`` for this run; an error for tasks without test-time augmentation."""
    from tlmulti.evaluation.tta import describe, views

    if task.tta_output is None:
        raise TlmultiError(f"--tta applies to image classification, multi-label, segmentation and detection runs; "
                           f"'{run_dir}' is {recipe.task}.")
    axes, note = views(getattr(getattr(recipe.data, "augment", None), "flip", "none"))
    click.echo(f"Test-time augmentation: {describe(axes)}" + (f" ({note})" if note else ""), err=True)
    return axes


def evaluate_with_tta(run_dir, recipe, task, model, examples, group_by) -> dict:
    """The metrics with ``--tta``; ``without_tta`` holds the plain ones and ``tta`` the views and
    the seconds of each evaluation."""
    import time

    from tlmulti.evaluation.tta import describe

    axes = tta_axes(run_dir, recipe, task)
    start = time.perf_counter()
    plain = task.evaluate(model, examples, group_by=group_by)
    middle = time.perf_counter()
    metrics = task.evaluate(task.with_tta(model, axes), examples, group_by=group_by)
    end = time.perf_counter()
    metrics["without_tta"] = plain
    metrics["tta"] = {"views": describe(axes), "seconds": round(end - middle, 3),
                      "seconds_without": round(middle - start, 3)}
    key = task.primary_metric
    if isinstance(metrics.get(key), (int, float)) and isinstance(plain.get(key), (int, float)):
        click.echo(f"With test-time augmentation: {key} {metrics[key]:.4f} against {plain[key]:.4f} without; "
                   f"{(end - middle) / max(middle - start, 1e-9):.1f}x the time.", err=True)
    return metrics


EXPLAIN_HELP = ("Image classification: write a Grad-CAM heatmap per input to DIR (<stem>.npy, <stem>.png over "
                "the image).")


def domain_group(name: str, help_text: str, default_task: str, flags=(), text_inputs: bool = False,
                 explain: bool | str = False):
    """A Click group with ``train``, ``evaluate`` and ``predict`` for one domain.

    ``flags``: the domain's own train options (:class:`~tlmulti.cli.flags.Flag`: option, recipe
    key, help), added to the shared ones. Domains with several tasks (vision) get ``--task``
    with the registered tasks of the family; ``explain`` adds ``predict --explain DIR`` (a string:
    the option's help).
    """
    from tlmulti import registry

    @click.group(name=name, help=help_text)
    def group():
        pass

    family = registry.get_task(default_task).family
    task_names = [t.name for t in registry.list_tasks(family)]
    task_option = (
        click.option("--task", type=click.Choice(task_names), default=None,
                     help=f"Task (default: the recipe's, or {default_task}).")
        if len(task_names) > 1 else (lambda f: f)
    )
    all_flags = TRAIN_FLAGS + tuple(flags)

    @group.command("train")
    @train_options(all_flags)
    @task_option
    @trust_option
    @user_errors
    def train_cmd(recipe, task=None, overrides=(), out=None, **values):
        """Train on your data: frozen-backbone phase, then unfreeze phases, per the recipe.

        RECIPE is a YAML recipe; without it the task's default recipe is used and flags
        override its values.
        """
        chosen = task or (None if recipe else default_task)
        given = overrides_from_flags(values, all_flags) + list(overrides or ())
        with received_recipe_rule(recipe, given):
            run_training(recipe_from_cli(recipe, chosen, overrides, all_flags, **values), out)

    @group.command("evaluate")
    @click.argument("run_dir", type=click.Path(file_okay=False))
    @click.option("--data", required=True, help="Labelled data to evaluate on.")
    @click.option("--group-by", help="Also report accuracy per value of this column, and the worst group.")
    @click.option("--compare", "compare_dir", type=click.Path(file_okay=False),
                  help="Another run folder to evaluate on the same data, side by side; 'source-only': "
                       "this run's model before domain adaptation.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the 'test' section shape).")
    @tta_option
    @trust_option
    @user_errors
    def evaluate_cmd(run_dir, data, group_by, compare_dir, as_json, tta):
        """Evaluate a trained run on labelled data."""
        from tlmulti.recipe import resolve_path
        from tlmulti.runs import load_run

        recipe, task, model = load_run(run_dir)
        examples = task.read(resolve_path(data), classes=task.classes)
        if tta:
            if compare_dir:
                raise TlmultiError("--tta and --compare cannot be combined; evaluate each run with --tta.")
            print_metrics(evaluate_with_tta(run_dir, recipe, task, model, examples, group_by), as_json, task)
            return
        metrics = task.evaluate(model, examples, group_by=group_by)
        if compare_dir:
            if compare_dir == "source-only":
                from tlmulti.runs import SOURCE_ONLY_MODEL

                _, other_task, other_model = load_run(run_dir, SOURCE_ONLY_MODEL)
                compare_dir = f"{run_dir} (source-only)"
            else:
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
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for outputs (segmentation masks, detection pictures).")
    @click.option("--score-threshold", type=float, default=None,
                  help="Object detection: keep boxes scoring at least this (default: the run's, chosen for the best "
                       "F1 on validation data; 0 keeps every box non-maximum suppression keeps).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @(click.option("--explain", "explain_dir", type=click.Path(file_okay=False), metavar="DIR",
                   help=explain if isinstance(explain, str) else EXPLAIN_HELP) if explain else (lambda f: f))
    @tta_option
    @trust_option
    @user_errors
    def predict_cmd(run_dir, inputs, input_file, top_k, out_dir, score_threshold, as_json, tta=False, explain_dir=None):
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
        if score_threshold is not None:
            if not getattr(task, "scores_boxes", False):
                raise TlmultiError(f"--score-threshold applies to object detection runs; '{run_dir}' is {recipe.task}.")
            kwargs["score_threshold"] = score_threshold
        if explain_dir and not task.explains:
            raise TlmultiError(f"--explain applies to image, multi-label, text and speech classification runs; "
                               f"'{run_dir}' is {recipe.task}: drop --explain.")
        predictor = task.with_tta(model, tta_axes(run_dir, recipe, task)) if tta else model
        results = task.predict(predictor, items, top_k=top_k, **kwargs)
        if explain_dir:  # of the model's own view (Grad-CAM and gradients read its layers, not the TTA wrapper's)
            for r, h in zip(results, task.explain(model, items, explain_dir)):
                r.update({k: v for k, v in h.items() if k not in ("input", "label")})
        if as_json:
            click.echo(json.dumps(results, indent=2))
            return
        for r in results:
            click.echo(task.format_prediction(r))
        if explain_dir:
            click.echo(task.explain_note.format(n=len(results), dir=explain_dir))

    return group
