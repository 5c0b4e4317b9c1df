"""Synthetic speech datasets built with espeak-ng and flite (see :mod:`tlmulti.synth`).

``speech-commands-synth``: the ten commands yes, no, up, down, left, right, on, off, stop, go,
spoken by every espeak-ng English accent with eight voice variants each (random speed and
pitch), and by flite's five voices. Splits are manifests: ``espeak`` (8 accents) and ``flite``
(5 voices), with ``speaker``, ``accent`` and ``engine`` columns.

``speech-words-synth``: the source vocabulary for pretraining: 160 everyday English words
(none of them a command or a homophone of one) by seven espeak-ng accents (all but en-029,
which the default recipe holds out), each utterance by a voice variant drawn from a pool of
20, with random speed and pitch. No flite voice is used, so flite stays unseen.

Example::

    from tlmulti.datasets import prepare
    root = prepare("speech-commands-synth")   # ~/.cache/tlmulti/datasets/speech-commands-synth/{espeak,flite}.csv
"""

from __future__ import annotations

import csv
from pathlib import Path

from tlmulti.synth import ESPEAK_ACCENTS, FLITE_VOICES, synthesize

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
COMMAND_VARIANTS = ("", "f2", "f4", "m1", "m3", "m5", "m7", "klatt")
HELD_OUT_ACCENT = "en-029"
SOURCE_ACCENTS = tuple(a for a in ESPEAK_ACCENTS if a != HELD_OUT_ACCENT)
SOURCE_VARIANTS = ("", "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
                   "klatt", "klatt2", "klatt3", "klatt4", "Andy", "anika")

# Everyday words, none a command or a homophone of one (know, write, ...).
SOURCE_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "hundred",
    "house", "bird", "cat", "dog", "tree", "forward", "backward", "follow", "learn", "visual", "wow",
    "sheila", "marvin", "bed", "happy", "water", "fire", "earth", "music", "light", "dark", "open",
    "close", "start", "pause", "play", "next", "back", "home", "menu", "volume", "louder", "quiet",
    "faster", "slower", "red", "green", "blue", "yellow", "orange", "purple", "black", "white",
    "brown", "pink", "apple", "banana", "bread", "butter", "cheese", "coffee", "tea", "milk", "sugar",
    "salt", "pepper", "table", "chair", "window", "door", "garden", "kitchen", "paper", "pencil",
    "book", "letter", "money", "market", "street", "river", "mountain", "ocean", "island", "city",
    "village", "country", "morning", "evening", "night", "today", "tomorrow", "yesterday", "monday",
    "friday", "summer", "winter", "spring", "autumn", "weather", "rain", "snow", "wind", "cloud",
    "sun", "moon", "star", "planet", "rocket", "engine", "machine", "computer", "phone", "camera",
    "picture", "story", "question", "answer", "problem", "number", "minute", "second", "hour",
    "week", "month", "year", "family", "mother", "father", "brother", "sister", "friend", "doctor",
    "teacher", "student", "people", "children", "animal", "horse", "rabbit", "tiger", "monkey",
    "elephant", "chicken", "fish", "flower", "forest", "desert", "bridge", "tower", "castle",
    "hospital", "school", "office", "library", "station", "airport", "hotel", "restaurant",
    "ticket", "journey", "holiday", "birthday", "party", "dinner", "lunch", "breakfast", "cancel",
)


def _write_split(path: Path, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": f"audio/{row['path']}"})


def build_commands(root: Path, words=COMMANDS, accents=ESPEAK_ACCENTS, variants=COMMAND_VARIANTS,
                   flite_voices=FLITE_VOICES, repeats: int = 1, flite_repeats: int | None = None,
                   seed: int = 0) -> None:
    """Synthesise the command set into ``root/audio`` and write ``root/espeak.csv`` and ``root/flite.csv``."""
    rows = synthesize(list(words), root / "audio", accents=accents, variants=variants,
                      flite_voices=flite_voices, repeats=repeats, flite_repeats=flite_repeats, seed=seed)
    for engine in ("espeak", "flite"):
        part = [r for r in rows if r["engine"] == engine]
        if part:
            _write_split(root / f"{engine}.csv", part)


def build_source(root: Path, words=SOURCE_WORDS, accents=SOURCE_ACCENTS, variants=SOURCE_VARIANTS,
                 per_accent: int = 6, seed: int = 1) -> None:
    """Synthesise the source vocabulary into ``root/audio`` and write ``root/train.csv``.

    Each word gets ``per_accent`` utterances per accent, each by a variant drawn from ``variants``.
    """
    rows = synthesize(list(words), root / "audio", accents=accents, variants=variants, flite_voices=(),
                      sample_variants=per_accent, seed=seed)
    _write_split(root / "train.csv", rows)
