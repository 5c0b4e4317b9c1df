"""How a task's results read in ``report.html``: which headline metrics, which per-class columns,
and what the confusion matrix counts. A task declares its :class:`ReportView`; the page asks
for it and never for the task's name.

Example::

    from tlmulti.reports.view import ReportView
    view = ReportView(metric_rows=(("mean Dice", "mean_dice"),), per_class_columns=("dice",),
                      per_class_score="dice", confusion_kind="Pixel confusion", confusion_cells="shares")
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTS_TEXT = ("<p>Each row is a true class; the numbers are counts, the colour is the share of the "
               "row. Off-diagonal cells are the confusions worth looking at.</p>")


@dataclass(frozen=True)
class ReportView:
    """``metric_rows``: ``(label, metrics key)`` of the headline table, in order (rows no split
    has are left out); ``per_class_columns``: the per-class keys shown, when present;
    ``per_class_score``: the key that names the weakest class; ``confusion_kind``: the matrix's
    title; ``confusion_cells``: ``"counts"`` or ``"shares"`` (per cent of the row) written in each
    cell; ``confusion_text``: the paragraph (HTML) that explains the matrix; ``figures``:
    ``(title, file)`` of PNG plots the task writes into the run folder, shown when present."""

    metric_rows: tuple = (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("F1 (positive class)", "f1"),
                          ("loss (cross-entropy)", "loss"), ("examples", "n"))
    per_class_columns: tuple = ("precision", "recall", "f1", "support")
    per_class_score: str = "f1"
    confusion_kind: str = "Confusion"
    confusion_cells: str = "counts"
    confusion_text: str = COUNTS_TEXT
    figures: tuple = ()
