"""Reading audio files into fixed-length mono waveforms, and the log-mel features of the contract.

Any file soundfile (libsndfile) reads works: WAV, FLAC, OGG/Vorbis, MP3 (libsndfile >= 1.1),
AIFF; other formats fall back to ``librosa.load`` (audioread). Every file is mixed down to mono,
resampled to the backbone's sample rate with soxr, optionally trimmed of leading and trailing
silence, and centred in (or cropped to) the clip length, so a batch is one ``(N, samples)``
float32 array whatever the files' rates and channel counts.

The model computes its own log-mel features (:class:`tlmulti.layers.audio.LogMelSpectrogram`,
whose mel filterbank is librosa's), so a saved model takes these waveforms directly.
:func:`log_mel` is the same computation in librosa and NumPy: the reference the layer is tested
against, and handy for looking at what the model sees.

Example::

    from tlmulti.data.audio import AudioContract, load_clips
    contract = AudioContract(sample_rate=16000, clip_seconds=1.0)
    x = load_clips(["yes.wav", "no.flac"], contract)      # (2, 16000) float32
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from tlmulti.choices import AUDIO_FRONTENDS as FRONTENDS
from tlmulti.choices import AUDIO_NORMALIZATIONS as NORMALIZATIONS
from tlmulti.choices import AUDIO_SCALES as SCALES
from tlmulti.errors import DataError

__all__ = ["AUDIO_SUFFIXES", "FRONTENDS", "NORMALIZATIONS", "SCALES", "AudioContract", "audio_files", "durations",
           "fit_length", "load_audio", "load_clip", "load_clips", "log_mel", "mel_filterbank",
           "scale_and_normalize"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".m4a")


@dataclass
class AudioContract:
    """What a model is fed: audio at ``sample_rate`` cut to ``clip_seconds``, and (frontend
    ``log_mel``) the log-mel parameters. ``waveform`` frontends (YAMNet) take the samples as
    they are. ``scale``: ``db`` (power in dB, floor ``top_db`` below the peak), ``whisper``
    (log10, 8 decades of range, ``(x + 4) / 4``, as Whisper was trained) or ``log`` (natural log).
    ``normalize``: ``utterance`` (mean/variance per mel band over each utterance's frames),
    ``global`` (one mean/variance per utterance) or ``none``.
    """

    sample_rate: int = 16000
    clip_seconds: float = 1.0
    frontend: str = "log_mel"
    n_mels: int = 40
    n_fft: int = 512
    win_length: int | None = None
    hop_length: int = 160
    fmin: float = 20.0
    fmax: float | None = None
    scale: str = "db"
    top_db: float = 80.0
    normalize: str = "utterance"
    trim_silence: bool = True
    trim_db: float = 30.0

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def frames(self) -> int:
        """Log-mel frames of one clip (centred STFT; Whisper's scale drops the last one)."""
        return self.clip_samples // self.hop_length + (self.scale != "whisper")

    def frontend_config(self) -> dict:
        """Keyword arguments of :class:`tlmulti.layers.audio.LogMelSpectrogram`."""
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "win_length": self.win_length,
                "hop_length": self.hop_length, "n_mels": self.n_mels, "fmin": self.fmin, "fmax": self.fmax,
                "scale": self.scale, "top_db": self.top_db, "normalize": self.normalize}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AudioContract":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names and v is not None})


def audio_files(path) -> list[Path]:
    """A single audio file, or every audio file in a folder (recursively, sorted)."""
    from tlmulti.data.manifest import files_in

    return files_in(path, AUDIO_SUFFIXES, "audio files")


def durations(paths) -> np.ndarray:
    """Seconds of each audio file, from its header (soundfile), decoding only what has none."""
    import soundfile as sf

    out = []
    for p in paths:
        try:
            out.append(sf.info(str(p)).duration)
        except Exception:
            try:
                wave, rate = load_audio(p)
                out.append(len(wave) / rate)
            except DataError:
                continue
    return np.asarray(out, dtype=np.float64)


def load_audio(path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, rate) of a file, resampled to ``sample_rate`` when given.

    Raises :class:`DataError` naming the file when it is missing, empty or not audio.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Audio file '{path}' does not exist; fix the path in the manifest.")
    if path.stat().st_size == 0:
        raise DataError(f"Audio file '{path}' is empty (0 bytes); remove or replace it.")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        wave = data.mean(axis=1)
    except Exception as exc:  # libsndfile cannot decode it: try audioread through librosa
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wave, rate = librosa.load(str(path), sr=None, mono=True)
        except Exception:
            raise DataError(
                f"Cannot read audio file '{path}' ({type(exc).__name__}: {str(exc).strip() or 'unknown format'}); "
                "it is not a WAV/FLAC/OGG/MP3 file soundfile or librosa can decode: remove or replace it."
            ) from None
    if wave.size == 0:
        raise DataError(f"Audio file '{path}' holds no samples; remove or replace it.")
    wave = np.nan_to_num(np.asarray(wave, dtype=np.float32))
    if sample_rate and rate != sample_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq").astype(np.float32)
        rate = sample_rate
    return wave, int(rate)


def fit_length(wave: np.ndarray, samples: int, trim_silence: bool = True, trim_db: float = 30.0) -> np.ndarray:
    """Trim silence at both ends (when asked), then centre-pad with zeros or centre-crop to ``samples``."""
    if trim_silence and wave.size and np.abs(wave).max() > 0:
        import librosa

        trimmed, _ = librosa.effects.trim(wave, top_db=trim_db)
        if trimmed.size:
            wave = trimmed
    n = wave.shape[0]
    if n >= samples:
        start = (n - samples) // 2
        return np.ascontiguousarray(wave[start:start + samples], dtype=np.float32)
    out = np.zeros(samples, dtype=np.float32)
    start = (samples - n) // 2
    out[start:start + n] = wave
    return out


def load_clip(path, contract: AudioContract) -> np.ndarray:
    """One file as a ``(clip_samples,)`` float32 waveform of the contract."""
    wave, _ = load_audio(path, contract.sample_rate)
    return fit_length(wave, contract.clip_samples, contract.trim_silence, contract.trim_db)


def load_clips(paths, contract: AudioContract, workers: int = 4) -> np.ndarray:
    """``(N, clip_samples)`` float32 waveforms of ``paths`` (read on a few threads)."""
    paths = list(paths)
    out = np.zeros((len(paths), contract.clip_samples), dtype=np.float32)
    if not paths:
        return out

    def one(i):
        out[i] = load_clip(paths[i], contract)

    if len(paths) < 16 or workers <= 1:
        for i in range(len(paths)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(len(paths))))
    return out


def stream_clips(paths, contract: AudioContract):
    """A :class:`~tlmulti.data.lazy.FileArray` of ``paths``, each decoded as :func:`load_clip`
    decodes it, one file at a time in the input pipeline."""
    from dataclasses import asdict
    from functools import partial

    from tlmulti.data.lazy import FileArray

    return FileArray([str(p) for p in paths], partial(load_clip, contract=contract), (contract.clip_samples,),
                     np.float32, {"reader": "audio", **asdict(contract)})


def read_clips(paths, contract: AudioContract, streaming="auto"):
    """Waveforms of ``paths``: decoded now (:func:`load_clips`), or streamed from the files when
    ``streaming`` says so (``auto``: over 1 GiB of decoded audio, about 4.6 hours at 16 kHz)."""
    from tlmulti.data.lazy import stream_choice

    paths = list(paths)
    if stream_choice(streaming, len(paths), contract.clip_samples * 4):
        return stream_clips(paths, contract)
    return load_clips(paths, contract)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """librosa's Slaney mel filterbank, ``(n_fft // 2 + 1, n_mels)`` (Whisper uses exactly this)."""
    import librosa

    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                             fmax=fmax if fmax else sample_rate / 2.0, htk=False, norm="slaney")
    return np.ascontiguousarray(fb.T, dtype=np.float32)


def log_mel(wave: np.ndarray, contract: AudioContract) -> np.ndarray:
    """``(frames, n_mels)`` log-mel features of one waveform, computed with librosa.

    The reference for :class:`tlmulti.layers.audio.LogMelSpectrogram` (which the model runs).
    """
    import librosa

    power = librosa.feature.melspectrogram(
        y=np.asarray(wave, dtype=np.float32), sr=contract.sample_rate, n_fft=contract.n_fft,
        win_length=contract.win_length, hop_length=contract.hop_length, n_mels=contract.n_mels,
        fmin=contract.fmin, fmax=contract.fmax or contract.sample_rate / 2.0, power=2.0, center=True,
        pad_mode="reflect", htk=False, norm="slaney",
    ).T
    if contract.scale == "whisper":
        power = power[:-1]
    return scale_and_normalize(power, contract.scale, contract.top_db, contract.normalize)


def scale_and_normalize(power: np.ndarray, scale: str, top_db: float = 80.0, normalize: str = "utterance") -> np.ndarray:
    """NumPy version of the layer's log compression and per-utterance normalisation."""
    power = np.maximum(power, 1e-10)
    if scale == "db":
        x = 10.0 * np.log10(power)
        x = np.maximum(x, x.max() - top_db)
    elif scale == "whisper":
        x = np.log10(power)
        x = np.maximum(x, x.max() - 8.0)
        x = (x + 4.0) / 4.0
    else:
        x = np.log(power + 1e-6)
    if normalize == "utterance":
        x = (x - x.mean(axis=0, keepdims=True)) / (x.std(axis=0, keepdims=True) + 1e-3)
    elif normalize == "global":
        x = (x - x.mean()) / (x.std() + 1e-3)
    return x.astype(np.float32)
