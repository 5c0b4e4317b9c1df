"""Audio test data: tones at mixed rates, formats and channel counts (no synthesiser needed)."""

from __future__ import annotations

import csv

import numpy as np


def tone(freq, rate, seconds=0.5, channels=1, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype("float32")
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def dominant_freq(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave))
    return np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]


def write_tones(root, per_class=6, seed=0):
    """Class folders low/high of short tones at mixed rates, formats and channel counts, and a
    manifest.csv with speaker/accent columns: a learnable audio set without a synthesiser."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    rows = []
    for label, base in (("low", 300.0), ("high", 2500.0)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rate = (8000, 11025, 16000, 22050)[i % 4]
            ext = ".flac" if i % 3 == 0 else ".wav"
            path = root / label / f"{label}_{i}{ext}"
            sf.write(path, tone(base * rng.uniform(0.9, 1.1), rate, 0.4, channels=1 + i % 2), rate)
            rows.append({"path": f"{label}/{path.name}", "label": label, "speaker": f"spk{i % 3}",
                         "accent": ("a", "b", "c")[i % 3]})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker", "accent"])
        writer.writeheader()
        writer.writerows(rows)
    return root
