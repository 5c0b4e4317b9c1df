"""Synthesising labelled speech with Debian's espeak-ng and flite, for keyword data offline.

Each word is spoken by every espeak-ng English accent with several voice variants (``+f2``,
``+m3``, ``+klatt``, ...) and random speed and pitch, and by flite's voices with random speaking
rate. Files go to ``OUT/<word>/<engine>_<voice>_<n>.wav`` at the engine's own sample rate
(espeak-ng 22,050 Hz, flite 8 or 16 kHz); ``OUT/manifest.csv`` lists ``path,label,speaker,accent,
engine,speed,pitch`` with paths relative to the manifest. ``speaker`` is the voice with its
variant (``espeak:en-gb-scotland+f2``); ``accent`` is the espeak accent or ``flite-<voice>``, so
``--group-by accent`` reports every flite voice as its own group.

Why: no speech corpus is installable offline, and synthetic accents and voices give a real,
measurable shift between training and unseen speakers. Install the engines with
``apt-get install -y espeak-ng flite``.

Example::

    from tlmulti.synth import synthesize
    rows = synthesize(["yes", "no"], "data/yesno", accents=["en-us", "en-gb-scotland"],
                      variants=["", "f2"], flite_voices=["slt"])
    print(len(rows), rows[0]["speaker"])   # 10 espeak:en-us
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlmulti.errors import DataError

# English accents of espeak-ng (``espeak-ng --voices=en``), US first.
ESPEAK_ACCENTS = ("en-us", "en-us-nyc", "en-gb", "en-gb-x-rp", "en-gb-scotland",
                  "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# Voice variants (``espeak-ng --voices=variant``); "" is the accent's default voice.
ESPEAK_VARIANTS = ("", "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7",
                   "klatt", "klatt2", "klatt3")
# flite's bundled voices (awb_time only speaks times, so it is left out).
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")

MANIFEST_COLUMNS = ("path", "label", "speaker", "accent", "engine", "speed", "pitch")


@dataclass(frozen=True)
class Utterance:
    """One file to synthesise: ``speed`` is words per minute (espeak) or a duration stretch
    (flite); ``pitch`` is espeak's 0-99 pitch (unused by flite)."""

    engine: str
    voice: str
    variant: str
    word: str
    speed: float
    pitch: float
    path: Path

    @property
    def speaker(self) -> str:
        return f"{self.engine}:{self.voice}" + (f"+{self.variant}" if self.variant else "")

    @property
    def accent(self) -> str:
        return self.voice if self.engine == "espeak" else f"flite-{self.voice}"

    def command(self) -> list[str]:
        if self.engine == "espeak":
            voice = self.voice + (f"+{self.variant}" if self.variant else "")
            # "--" ends espeak-ng's options: a word such as "--version" or "-x" is spoken, not obeyed.
            return ["espeak-ng", "-v", voice, "-s", str(int(self.speed)), "-p", str(int(self.pitch)),
                    "-w", str(self.path), "--", self.word]
        # flite's -t takes the next argument as the text, whatever it begins with.
        return ["flite", "-voice", self.voice, "--setf", f"duration_stretch={self.speed:.3f}",
                "-t", self.word, "-o", str(self.path)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("_") or "x"


def require_engine(engine: str) -> str:
    """Path of ``espeak-ng`` / ``flite``; a clear error saying how to install a missing one."""
    binary = "espeak-ng" if engine == "espeak" else "flite"
    found = shutil.which(binary)
    if not found:
        raise DataError(
            f"'{binary}' is not installed; install it with 'apt-get install -y {binary}' "
            "(make install does this) or leave that engine out."
        )
    return found


def plan(words, out_dir, accents=ESPEAK_ACCENTS, variants=ESPEAK_VARIANTS, flite_voices=FLITE_VOICES,
         repeats: int = 1, flite_repeats: int | None = None, speed=(130, 200), pitch=(25, 75),
         flite_stretch=(0.8, 1.25), seed: int = 0, sample_variants: int | None = None) -> list[Utterance]:
    """The utterances :func:`synthesize` writes: per word, ``repeats`` per espeak accent and
    variant, and ``flite_repeats`` (default: as many as one espeak accent gets) per flite voice.
    With ``sample_variants=k`` each word and accent gets ``k`` variants drawn at random from
    ``variants`` instead of all of them (more speakers for the same number of files)."""
    words = [w.strip() for w in words if w and w.strip()]
    if not words:
        raise DataError("No words to synthesise; give at least one (e.g. --words yes,no).")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    variants = list(variants) or [""]
    per_accent = min(sample_variants, len(variants)) if sample_variants else len(variants)
    if flite_repeats is None:
        flite_repeats = per_accent * repeats
    todo = []
    for word in words:
        folder = out_dir / _slug(word)
        for accent in accents:
            chosen = variants
            if sample_variants:
                chosen = [str(v) for v in rng.choice(variants, per_accent, replace=False)]
            for variant in chosen:
                for k in range(repeats):
                    name = f"espeak_{_slug(accent)}_{_slug(variant or 'default')}_{k}.wav"
                    todo.append(Utterance("espeak", accent, variant, word, float(rng.uniform(*speed)),
                                          float(rng.uniform(*pitch)), folder / name))
        for voice in flite_voices:
            for k in range(flite_repeats):
                todo.append(Utterance("flite", voice, "", word, float(rng.uniform(*flite_stretch)), 0.0,
                                      folder / f"flite_{_slug(voice)}_{k}.wav"))
    return todo


def _run(utt: Utterance) -> str | None:
    try:
        proc = subprocess.run(utt.command(), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{utt.speaker} failed on '{utt.word}': {exc}"
    if proc.returncode != 0 or not utt.path.is_file() or utt.path.stat().st_size <= 44:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        return f"{utt.speaker} could not say '{utt.word}' ({why[0] if why else 'no audio written'})"
    return None


def synthesize(words, out_dir, accents=ESPEAK_ACCENTS, variants=ESPEAK_VARIANTS, flite_voices=FLITE_VOICES,
               repeats: int = 1, flite_repeats: int | None = None, speed=(130, 200), pitch=(25, 75),
               flite_stretch=(0.8, 1.25), seed: int = 0, jobs: int | None = None,
               manifest: str = "manifest.csv", sample_variants: int | None = None) -> list[dict]:
    """Write the audio and ``out_dir/manifest`` (see the module docstring); returns the rows.

    ``accents`` / ``flite_voices`` may be empty to use one engine only; ``jobs`` engine processes
    run at once. Speeds, pitches and
    stretches are drawn uniformly from the given ranges with ``seed``, so a run is repeatable.
    """
    accents, flite_voices = list(accents or ()), list(flite_voices or ())
    if not accents and not flite_voices:
        raise DataError("No voices: give at least one espeak-ng accent or flite voice.")
    if accents:
        require_engine("espeak")
        unknown = [a for a in accents if not _espeak_voice_exists(a)]
        if unknown:
            raise DataError(f"espeak-ng has no voice '{unknown[0]}'; English accents: {', '.join(ESPEAK_ACCENTS)}.")
        known = _espeak_variants()
        bad = [v for v in variants if v and known and v not in known]
        if bad:
            raise DataError(f"espeak-ng has no voice variant '{bad[0]}'; see 'espeak-ng --voices=variant' "
                            f"(e.g. {', '.join(v for v in ESPEAK_VARIANTS if v)}).")
    if flite_voices:
        require_engine("flite")
        unknown = [v for v in flite_voices if v not in _flite_voices()]
        if unknown:
            raise DataError(f"flite has no voice '{unknown[0]}'; voices: {', '.join(sorted(_flite_voices()))}.")
    todo = plan(words, out_dir, accents, variants if accents else (), flite_voices, repeats, flite_repeats,
                speed, pitch, flite_stretch, seed, sample_variants)
    out_dir = Path(out_dir)
    for folder in sorted({u.path.parent for u in todo}):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = jobs or max(2, min(8, 2 * (os.cpu_count() or 1)))
    from tlmulti.progress import Every, progress_bar

    done = Every(progress_bar(len(todo), f"Synthesising speech into {out_dir}", unit="clip", at_least=200),
                 len(todo), step=50)
    errors = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for e in pool.map(_run, todo):
            done.add()
            if e:
                errors.append(e)
    if errors:
        raise DataError(f"Synthesis failed for {len(errors)} of {len(todo)} files; first: {errors[0]}.")
    rows = [{"path": str(u.path.relative_to(out_dir)), "label": u.word, "speaker": u.speaker,
             "accent": u.accent, "engine": u.engine, "speed": round(u.speed, 3), "pitch": round(u.pitch, 1)}
            for u in todo]
    write_manifest(out_dir / manifest, rows)
    return rows


def write_manifest(path, rows) -> None:
    """A CSV manifest with :data:`MANIFEST_COLUMNS` (paths relative to its folder)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


_VOICE_CACHE: dict[str, set] = {}


def _espeak_voice_exists(accent: str) -> bool:
    if "espeak" not in _VOICE_CACHE:
        try:
            text = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        names = set()
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2:
                names.add(parts[1])
        _VOICE_CACHE["espeak"] = names
    names = _VOICE_CACHE["espeak"]
    return not names or accent in names


def _espeak_variants() -> set:
    """Variant names usable after ``+`` (the file names under ``!v/``); empty when unknown."""
    if "variant" not in _VOICE_CACHE:
        try:
            text = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        _VOICE_CACHE["variant"] = {m.group(1) for m in re.finditer(r"!v/(\S+)", text)}
    return _VOICE_CACHE["variant"]


def _flite_voices() -> set:
    if "flite" not in _VOICE_CACHE:
        try:
            proc = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30)
            text = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        names = set(text.split(":", 1)[-1].split()) if ":" in text else set(FLITE_VOICES)
        _VOICE_CACHE["flite"] = names or set(FLITE_VOICES)
    return _VOICE_CACHE["flite"]
