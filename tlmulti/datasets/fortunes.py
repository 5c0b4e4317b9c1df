"""Fortune-cookie quotes by category, from Debian's ``fortunes`` and ``fortunes-min`` packages.

The packages hold about 15,000 quotes in 43 category files under ``/usr/share/games/fortunes``
(``computers``, ``definitions``, ``law``, ``science``, ``songs-poems``, ...), one quote after
another with ``%`` lines between them. The category is a noisy label: many quotes would fit
several categories, and the files mix one-liners, dialogues, poems and drawings. That makes a
many-class text set far from the e-mails and reviews text encoders are usually tried on.

The builder keeps the categories with at least ``min_quotes`` quotes (24 of 43 at 200) and draws,
per category and with ``seed``, ``train_per_class`` quotes for ``train.csv`` and
``test_per_class`` others for ``test.csv``; columns ``text`` and ``label``.

Example::

    from tlmulti.datasets import prepare
    root = prepare("fortunes")   # .../datasets/fortunes/{train,test}.csv
"""

from __future__ import annotations

import re
from pathlib import Path

from tlmulti.datasets import write_text_splits
from tlmulti.errors import DataError

SOURCE = Path("/usr/share/games/fortunes")


def read_categories(source: Path = SOURCE) -> dict[str, list[str]]:
    """``{category: [quote, ...]}`` of the plain-text category files of ``source`` (the
    ``.dat`` indexes and ``.u8`` links skipped), whitespace inside each quote kept, empty ones dropped."""
    files = sorted(p for p in source.glob("*") if p.is_file() and not p.is_symlink() and not p.suffix) \
        if source.is_dir() else []
    if not files:
        raise DataError(f"No fortune files found in '{source}'; install them with "
                        "'apt-get install fortunes fortunes-min' (make install does this).")
    out = {}
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        quotes = [q.strip("\n") for q in re.split(r"^%\s*$", text, flags=re.M)]
        out[path.name] = [q for q in quotes if q.strip()]
    return out


def build(root: Path, min_quotes: int = 200, train_per_class: int = 30, test_per_class: int = 30, seed: int = 0,
          source: Path = SOURCE) -> None:
    """Write ``train.csv`` and ``test.csv`` (``text``, ``label``) into ``root``."""
    kept = {c: q for c, q in read_categories(source).items() if len(q) >= max(min_quotes, train_per_class +
                                                                                   test_per_class)}
    if len(kept) < 2:
        raise DataError(f"Fewer than two fortune categories in '{source}' have {min_quotes} quotes.")
    write_text_splits(root, kept, train_per_class, test_per_class, seed)
