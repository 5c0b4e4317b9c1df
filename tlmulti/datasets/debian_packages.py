"""Debian package summaries by archive section: short technical one-liners, 21 topics.

Every Debian package has a one-line summary (``Description: sliding tile puzzle game``) and an
archive section (``games``). The package lists that ``apt-get update`` fetches hold about 60,000
of them; ``apt-cache dumpavail`` prints them as RFC-822 records. The builder keeps the topical
sections (``SECTIONS``: games, science, sound, mail, math, ...; not the per-language or library
sections, whose summaries name the language), drops summaries that more than one package shares
(``-dev`` / ``-doc`` twins, or one summary under two sections), and draws, per section and with
``seed``, ``train_per_class`` summaries for ``train.csv`` and ``test_per_class`` others for
``test.csv``; columns ``text`` and ``label``. A set of very short texts (about eight words) whose
labels overlap (``utils`` / ``admin``, ``x11`` / ``graphics``), unlike e-mails or quotes.

Example::

    from tlmulti.datasets import prepare
    root = prepare("debian-packages")   # .../datasets/debian-packages/{train,test}.csv
"""

from __future__ import annotations

import collections
import shutil
import subprocess
from pathlib import Path

from tlmulti.datasets import write_text_splits
from tlmulti.errors import DataError

SECTIONS = ("admin", "comm", "database", "editors", "electronics", "fonts", "games", "graphics", "hamradio",
            "httpd", "mail", "math", "net", "science", "sound", "text", "utils", "vcs", "video", "web", "x11")
MISSING = ("Debian's package lists are empty or missing{where}; on Debian or Ubuntu run 'apt-get update' "
           "(make install does this).")


def _records(text: str):
    """``(section, summary)`` of each package record of an ``apt-cache dumpavail`` text."""
    for record in text.split("\n\n"):
        fields = {}
        for line in record.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Section") and fields.get("Description"):
            yield fields["Section"].rsplit("/", 1)[-1], fields["Description"]


def read_sections(source: Path | None = None) -> dict[str, list[str]]:
    """``{section: [summary, ...]}`` from ``source`` (a file in ``apt-cache dumpavail`` format) or,
    by default, from ``apt-cache dumpavail``; a summary shared by several packages is dropped."""
    if source is not None:
        if not Path(source).is_file():
            raise DataError(MISSING.format(where=f" ('{source}' not found)"))
        text = Path(source).read_text(encoding="utf-8", errors="replace")
    else:
        if not shutil.which("apt-cache"):
            raise DataError(MISSING.format(where=" (no apt-cache on this machine)"))
        text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, errors="replace",
                              check=False).stdout
    pairs = list(_records(text))
    if not pairs:
        raise DataError(MISSING.format(where=""))
    counts = collections.Counter(summary for _, summary in pairs)
    out = collections.defaultdict(list)
    for section, summary in pairs:
        if counts[summary] == 1:
            out[section].append(summary)
    return {s: sorted(v) for s, v in out.items()}


def build(root: Path, sections=SECTIONS, train_per_class: int = 30, test_per_class: int = 30, seed: int = 0,
          source: Path | None = None) -> None:
    """Write ``train.csv`` and ``test.csv`` (``text``, ``label``) into ``root``."""
    available = read_sections(source)
    kept = {s: available[s] for s in sections if len(available.get(s, ())) >= train_per_class + test_per_class}
    if len(kept) < 2:
        raise DataError(f"Fewer than two of the sections {', '.join(sections)} have {train_per_class + test_per_class} "
                        "package summaries in Debian's package lists; run 'apt-get update'.")
    write_text_splits(root, kept, train_per_class, test_per_class, seed)
