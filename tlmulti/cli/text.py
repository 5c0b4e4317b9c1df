"""``tlmulti text``: text classification with BERT-family encoders.

``train`` takes the shared options plus ``--text-column`` (repeatable: several columns are
joined), ``--label-column`` and ``--max-length``; ``predict`` takes raw strings as arguments or
``--file`` with one text per line::

    tlmulti text train --data mails.csv --text-column subject --text-column body --out runs/mails
    tlmulti text predict runs/mails "Cheap meds, no prescription" --json
    tlmulti text predict runs/mails "Cheap meds, no prescription" --explain why/   # + word attributions
"""

from __future__ import annotations

from tlmulti.cli.common import domain_group
from tlmulti.cli.flags import Flag

TEXT_FLAGS = (
    Flag("--text-column", "data.text_column", multiple=True,
         help="Text column of a CSV/TSV/JSONL manifest (repeat to join several, e.g. subject and body)."),
    Flag("--label-column", "data.label_column", help="Label column of the manifest (default: label)."),
    Flag("--max-length", "data.sequence_length", kind=int, help="Tokens per text, [CLS] and [SEP] included."),
)

text = domain_group(
    "text",
    "Text classification with BERT-family encoders (MiniLM offline): train, evaluate, predict.",
    default_task="text_classification",
    flags=TEXT_FLAGS,
    text_inputs=True,
    explain="Word attributions (occlusion) for the predicted class: rows gain 'attributions' (word, score), the "
            "output the top 5 words that raised it, and DIR/<n>.html shows the n-th text highlighted.",
)
