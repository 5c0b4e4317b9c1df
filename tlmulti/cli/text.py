"""``tlmulti text``: text classification with BERT-family encoders.

``train`` takes the shared options plus ``--text-column`` (repeatable: several columns are
joined), ``--label-column`` and ``--max-length``; ``predict`` takes raw strings as arguments or
``--file`` with one text per line::

    tlmulti text train --data mails.csv --text-column subject --text-column body --out runs/mails
    tlmulti text predict runs/mails "Cheap meds, no prescription" --json
"""

from __future__ import annotations

import functools
import json

import click

from tlmulti.cli.common import domain_group

text = domain_group(
    "text",
    "Text classification with BERT-family encoders (MiniLM offline): train, evaluate, predict.",
    default_task="text_classification",
    text_inputs=True,
)


def _add_column_options(command: click.Command) -> None:
    """Give ``train`` the text options, turned into recipe overrides before the shared code runs."""
    command.params.extend([
        click.Option(["--text-column", "text_columns"], multiple=True,
                     help="Text column of a CSV/TSV/JSONL manifest (repeat to join several, e.g. subject and body)."),
        click.Option(["--label-column"], help="Label column of the manifest (default: label)."),
        click.Option(["--max-length"], type=int, help="Tokens per text, [CLS] and [SEP] included."),
    ])
    callback = command.callback

    @functools.wraps(callback)
    def wrapped(*args, text_columns=(), label_column=None, max_length=None, overrides=(), **kwargs):
        sets = []
        if text_columns:
            sets.append(f"data.text_column={json.dumps(list(text_columns))}")
        if label_column:
            sets.append(f"data.label_column={json.dumps(label_column)}")
        if max_length is not None:
            sets.append(f"data.sequence_length={max_length}")
        return callback(*args, overrides=tuple(sets) + tuple(overrides), **kwargs)

    command.callback = wrapped


_add_column_options(text.commands["train"])
