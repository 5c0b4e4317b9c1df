"""Word attributions of text classifiers by occlusion: how much each word holds up the predicted
class's probability.

A text is split into words at whitespace. For each of its first :data:`MAX_WORDS` words the text
is scored once more with that word removed (the rest of the text, spacing included, left as it
is); the word's score is the predicted class's probability on the text as given minus that
probability without the word. Positive: the word raised the class; negative: it lowered it;
0: the model did not notice it (words past the tokenizer's sequence length always score 0).
Words past :data:`MAX_WORDS` get no score (``None``).

Removing a word rather than swapping in ``[UNK]`` or ``[MASK]`` needs nothing from the
tokenizer: the saved text model takes raw strings, so the occluded variants are plain strings
too, and all variants of all texts go through the model in one ``predict`` call.

Example::

    rows = word_attributions(lambda texts: model.predict(tf.constant(texts)), ["Win free cash now"])
    rows[0]["attributions"]   # [{"word": "Win", "score": 0.12}, {"word": "free", "score": 0.31}, ...]
"""

from __future__ import annotations

import re

import numpy as np

MAX_WORDS = 128  # words per text that are scored (one extra forward pass each)
TOP_WORDS = 5  # words that raised the prediction most, printed by ``text predict --explain``

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every whitespace-separated word of ``text``."""
    return [m.span() for m in _WORD.finditer(text)]


def occluded(text: str, spans, limit: int = MAX_WORDS) -> list[str]:
    """``text`` once per word of its first ``limit`` ``spans``, without that word."""
    return [text[:a] + text[b:] for a, b in list(spans)[:limit]]


def word_attributions(probabilities, texts, max_words: int = MAX_WORDS) -> list[dict]:
    """Occlusion attributions of ``texts`` for their predicted classes.

    ``probabilities(list_of_strings)`` returns class probabilities ``(N, classes)``. One row per
    text: ``{"class": index, "probability": p, "attributions": [{"word", "score"}, ...]}``, the
    attributions in text order, one per word (``score`` None past ``max_words``)."""
    texts = [str(t) for t in texts]
    spans = [word_spans(t) for t in texts]
    variants, owner = [], []
    for i, (text, s) in enumerate(zip(texts, spans)):
        cut = occluded(text, s, max_words)
        variants += cut
        owner += [i] * len(cut)
    probs = np.asarray(probabilities(texts + variants), np.float64)
    base, rest = probs[: len(texts)], probs[len(texts):]
    owner = np.asarray(owner, np.int64)
    rows = []
    for i, (text, s) in enumerate(zip(texts, spans)):
        c = int(base[i].argmax())
        drops = base[i, c] - rest[owner == i, c] if len(rest) else np.zeros(0)
        words = [{"word": text[a:b], "score": round(float(d), 6) if k < len(drops) else None}
                 for k, ((a, b), d) in enumerate(zip(s, list(drops) + [None] * (len(s) - len(drops))))]
        rows.append({"class": c, "probability": float(base[i, c]), "attributions": words})
    return rows


def top_words(attributions: list[dict], k: int = TOP_WORDS) -> list[dict]:
    """The ``k`` words that raised the prediction most (positive scores only), highest first."""
    scored = [a for a in attributions if a.get("score") is not None and a["score"] > 0]
    return sorted(scored, key=lambda a: -a["score"])[:k]
