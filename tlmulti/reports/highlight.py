"""Texts with their word attributions drawn as highlights (:mod:`tlmulti.evaluation.attribution`):
red behind words that raised the predicted class, blue behind words that lowered it, the
stronger the colour the larger the score (scaled to the text's largest absolute score). Every
word is HTML-escaped; the score shows as the word's tooltip.

Used by report.html's example cards and by the per-input pages ``text predict --explain DIR``
writes (:func:`page`).
"""

from __future__ import annotations

from tlmulti.reports.markup import esc

LEGEND = ("Words on red raised the predicted class's probability, words on blue lowered it (occlusion: "
          "the probability with the text as given minus without the word); the stronger the colour, the "
          "larger the change.")


def highlighted(attributions: list[dict], max_chars: int | None = None) -> str:
    """The words of ``attributions`` (``{"word", "score"}`` in text order) as HTML spans, joined
    by spaces; cut with `` …`` past ``max_chars`` characters of text."""
    scores = [abs(float(a["score"])) for a in attributions if a.get("score") is not None]
    top = max(scores) if scores else 0.0
    parts, used = [], 0
    for a in attributions:
        word = str(a.get("word", ""))
        if max_chars is not None and used + len(word) > max_chars:
            parts.append("…")
            break
        used += len(word) + 1
        score = a.get("score")
        if score is None or top <= 0 or float(score) == 0:
            parts.append(f"<span>{esc(word)}</span>")
            continue
        alpha = min(1.0, abs(float(score)) / top) * 0.85
        rgb = "220,38,38" if float(score) > 0 else "37,99,235"
        parts.append(f'<span style="background:rgba({rgb},{alpha:.2f})" title="{float(score):+.4f}">{esc(word)}</span>')
    return " ".join(parts)


def note(examples) -> str:
    """The legend under report.html's examples when any of them carries word attributions."""
    if not any(isinstance(e, dict) and e.get("attributions") for e in examples or []):
        return ""
    return f"<p class=\"muted\">{esc(LEGEND)}</p>"


def page(text_label: str, attributions: list[dict], predicted: str, probability: float) -> str:
    """A small self-contained HTML page: one text highlighted for its predicted class."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(text_label)}</title><style>body{{font:15px/1.7 system-ui,sans-serif;max-width:860px;"
            "margin:24px auto;padding:0 16px;color:#1d2433}.text{white-space:pre-wrap;word-break:break-word}"
            ".muted{color:#5b6474;font-size:13px}span{border-radius:3px;padding:0 1px}</style></head><body>"
            f"<p>Predicted <b>{esc(predicted)}</b> ({100 * float(probability):.1f}%)</p>"
            f"<div class=\"text\">{highlighted(attributions)}</div><p class=\"muted\">{esc(LEGEND)}</p>"
            "</body></html>\n")
