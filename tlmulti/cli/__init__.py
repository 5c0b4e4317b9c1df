"""The ``tlmulti`` command: thin Click groups that import TensorFlow only when a command runs.

``tlmulti --help`` and every ``--help`` stay fast: sub-commands are loaded lazily from their
modules, and those modules import the heavy parts inside the command functions.
"""

from __future__ import annotations

import importlib

import click

from tlmulti import __version__

_COMMANDS = {
    "vision": ("tlmulti.cli.vision", "vision", "Image classification and segmentation."),
    "text": ("tlmulti.cli.text", "text", "Text classification with BERT-family encoders."),
    "audio": ("tlmulti.cli.audio", "audio", "Speech classification, robust to accents."),
    "run": ("tlmulti.cli.commands", "run", "Run any recipe, dispatching on its task."),
    "resume": ("tlmulti.cli.commands", "resume", "Continue an interrupted or failed run from its checkpoint."),
    "export": ("tlmulti.cli.commands", "export", "Export a run to SavedModel, TFLite or ONNX, preprocessing inside."),
    "recipes": ("tlmulti.cli.commands", "recipes", "List and show the bundled recipes."),
    "backbones": ("tlmulti.cli.commands", "backbones", "List backbones; save a trained one by name."),
    "weights": ("tlmulti.cli.commands", "weights", "Offline weights: list, import, path."),
    "datasets": ("tlmulti.cli.commands", "datasets", "Built-in datasets made from installed packages."),
    "cache": ("tlmulti.cli.commands", "cache", "The feature cache reused across runs: list, clear."),
    "runs": ("tlmulti.cli.runs", "runs", "Tables of run folders: list, compare."),
    "ui": ("tlmulti.cli.runs", "ui", "Browse runs tracked with --track in the MLflow UI."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name, (module, _, _) in _COMMANDS.items() if importlib.util.find_spec(module)]

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        if importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tlmulti")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's own log lines (hidden by default).")
def main(verbose):
    """Transfer learning for vision, text and audio on TensorFlow / Keras 3, offline first.

    Train a head on a frozen pretrained backbone, then unfreeze named layer groups at a lower
    learning rate. Every domain shares one recipe format, one registry and one trainer.
    """
    if verbose:
        import os

        os.environ["TLMULTI_VERBOSE"] = "1"
