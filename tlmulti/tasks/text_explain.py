"""Word attributions of text classification runs: what ``text predict --explain DIR`` writes and
the highlighted texts of report.html (occlusion, :mod:`tlmulti.evaluation.attribution`).

``predict --explain DIR`` adds to each prediction ``attributions`` (``{"word", "score"}`` per
whitespace-separated word, in text order) and ``explanation``: ``DIR/<n>.html``, the text (the
n-th input, counted from 1) with its words highlighted, red for words that raised the predicted
class and blue for words that lowered it.
"""

from __future__ import annotations

import sys

import numpy as np

REPORT_TEXTS = 16  # most-wrong texts of report.html that get attributions


def _scorer(task, model):
    def probabilities(texts):
        x = np.empty(len(texts), dtype=object)
        x[:] = texts
        return task.probabilities(model, x)

    return probabilities


def attributions(task, model, texts) -> list[dict]:
    """:func:`tlmulti.evaluation.attribution.word_attributions` of ``texts`` under ``model``."""
    from tlmulti.evaluation.attribution import word_attributions

    return word_attributions(_scorer(task, model), texts)


def explain_texts(task, model, items, out_dir) -> list[dict]:
    """One ``{"input", "label", "attributions", "explanation"}`` per text of ``items`` (in
    ``predict``'s order), each page written to ``out_dir/<n>.html``."""
    from tlmulti.reports.highlight import page
    from tlmulti.tasks.explain_output import explain_folder, writing

    _, texts = task.read_inputs(items)
    out = explain_folder(out_dir)
    rows = []
    for n, (text, row) in enumerate(zip(texts, attributions(task, model, texts)), start=1):
        c = row["class"]
        label = task.classes[c] if c < len(task.classes) else str(c)
        path = out / f"{n}.html"
        with writing(path):
            path.write_text(page(f"{label}: input {n}", row["attributions"], label, row["probability"]),
                            encoding="utf-8")
        rows.append({"input": text, "label": label, "attributions": row["attributions"], "explanation": str(path)})
    return rows


def with_attributions(task, model, shown: list[dict]) -> list[dict]:
    """The report's most-wrong examples, the first :data:`REPORT_TEXTS` texts with their word
    attributions (``attributions``) for the class the model predicted. Any failure leaves them
    as they are: the report shows the plain texts."""
    try:
        cards = [e for e in shown if e.get("kind") == "text" and e.get("text")][:REPORT_TEXTS]
        if cards:
            for e, row in zip(cards, attributions(task, model, [e["text"] for e in cards])):
                e["attributions"] = row["attributions"]
    except Exception as exc:  # noqa: BLE001 - highlights must never cost a finished run its report
        print(f"note: report.html has no word attributions ({type(exc).__name__}: {exc})", file=sys.stderr,
              flush=True)
    return shown
