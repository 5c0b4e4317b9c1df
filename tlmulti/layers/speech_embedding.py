"""Layers of Google's speech_embedding model (the keyword-spotting embedding openWakeWord uses).

The embedding model maps a window of 76 log-mel frames (about 0.775 s of 16 kHz audio) to one
96-d vector; consecutive windows are 8 frames (80 ms) apart. These layers let a Keras model take
raw waveforms and compute everything itself, so a saved ``.keras`` file needs no TFLite runtime:

* :class:`SpeechEmbeddingMel`: waveform ``(batch, samples)`` float in [-1, 1] -> features
  ``(batch, frames, 32)``, equal to openWakeWord's ``melspectrogram.tflite`` followed by its
  ``x / 10 + 2`` transform. The tflite graph is a 512-point STFT done as a strided convolution
  with constant DFT weights (periodic 400-sample Hann window centred in the 512 frame, hop 160,
  no padding), power, librosa's Slaney mel filterbank (32 bands, 60-3800 Hz), ``10 log10``
  floored at 1e-10 power and at 80 dB below the peak. The DFT and mel matrices are recomputed
  in numpy from the config (they equal the tflite constants to float32 rounding), so they are
  neither weights nor part of the saved config;
* :class:`MelWindows`: features ``(batch, frames, 32)`` -> windows ``(batch, windows, 76, 32, 1)``
  with ``windows = (frames - 76) // 8 + 1``;
* :class:`FoldWindows` / :class:`UnfoldWindows`: ``(batch, windows, ...)`` <-> ``(batch *
  windows, ...)``, so the CNN runs on every window as an ordinary batch;
* :class:`FlooredLeakyReLU`: ``max(leaky_relu(x, 0.2), -0.4)``, the activation after every conv.

Two deliberate differences from the tflite graph: the 80 dB floor is taken per example (the
tflite file reduces the peak over the whole batch, which openWakeWord always feeds as batch 1),
and ``min_samples`` can zero-pad short clips at the end before the STFT.

Example::

    import numpy as np
    from tlmulti.layers.speech_embedding import MelWindows, SpeechEmbeddingMel
    wave = np.random.default_rng(0).uniform(-0.1, 0.1, (2, 16000)).astype("float32")
    mel = SpeechEmbeddingMel()(wave)     # (2, 97, 32)
    windows = MelWindows()(mel)          # (2, 3, 76, 32, 1)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 32
FMIN = 60.0
FMAX = 3800.0
WINDOW_FRAMES = 76
WINDOW_STEP = 8
INT16_SCALE = 32768.0
_LOG10_E = 0.4342944819032518


def frames_for(samples: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> int:
    """Number of STFT frames the front end gives for ``samples`` samples (no padding)."""
    return max(0, (int(samples) - n_fft) // hop_length + 1)


def windows_for(frames: int, window: int = WINDOW_FRAMES, step: int = WINDOW_STEP) -> int:
    """Number of embedding windows :class:`MelWindows` cuts from ``frames`` frames."""
    return max(0, (int(frames) - window) // step + 1)


def samples_for_frames(frames: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> int:
    """Fewest samples that give ``frames`` frames: 12,512 (0.782 s) for one 76-frame window."""
    return n_fft + (int(frames) - 1) * hop_length


def dft_kernel(n_fft: int = N_FFT, win_length: int = WIN_LENGTH) -> np.ndarray:
    """Windowed DFT as a conv kernel ``(win_length, 1, 2 * (n_fft // 2 + 1))``: cosines then
    negated sines, times a periodic Hann window, for the ``win_length`` taps that sit centred in
    each ``n_fft`` frame (the taps outside it are zero in melspectrogram.tflite)."""
    offset = (n_fft - win_length) // 2
    n = np.arange(win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    bins = np.arange(n_fft // 2 + 1, dtype=np.float64)
    phase = 2.0 * np.pi * np.outer(n + offset, bins) / n_fft
    kernel = np.concatenate([np.cos(phase), -np.sin(phase)], axis=1) * window[:, None]
    return kernel[:, None, :].astype("float32")


def _hz_to_mel(freq):
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = freq / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / log_step, mels)


def _mel_to_hz(mels):
    mels = np.asarray(mels, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(log_step * (mels - 15.0)), mels * (200.0 / 3))


def slaney_mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                          fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` triangular filters, Slaney scale and area normalisation:
    ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney").T``."""
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights.T.astype("float32")


@keras.saving.register_keras_serializable(package="tlmulti")
class SpeechEmbeddingMel(keras.layers.Layer):
    """Waveforms ``(batch, samples)`` in [-1, 1] to speech_embedding features ``(batch, frames, 32)``.

    ``frames = (samples - 512) // 160 + 1`` (97 per second); the output is
    ``max(10 log10(max(mel_power, 1e-10)), peak - top_db) * out_scale + out_offset`` with the
    waveform first multiplied by ``input_scale`` (int16 units, as openWakeWord feeds the tflite).

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels, fmin, fmax: STFT and mel parameters;
            the defaults are melspectrogram.tflite's.
        input_scale: factor from the float waveform to the model's units (32768: int16 / 32768,
            as soundfile reads 16-bit files).
        top_db: floor below each example's peak, in dB.
        out_scale, out_offset: openWakeWord's transform of the tflite output (``x / 10 + 2``).
        min_samples: clips shorter than this are zero-padded at the end first (0 = never);
            ``samples_for_frames(76)`` = 12,512 guarantees one embedding window.
    """

    def __init__(self, sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
                 n_mels=N_MELS, fmin=FMIN, fmax=FMAX, input_scale=INT16_SCALE, top_db=80.0, out_scale=0.1,
                 out_offset=2.0, min_samples=0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(win_length) > int(n_fft):
            raise ValueError(f"win_length {win_length} exceeds n_fft {n_fft}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = float(fmax)
        self.input_scale = float(input_scale)
        self.top_db = None if top_db is None else float(top_db)
        self.out_scale = float(out_scale)
        self.out_offset = float(out_offset)
        self.min_samples = int(min_samples or 0)
        self._kernel = dft_kernel(self.n_fft, self.win_length)
        self._mel = slaney_mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax)

    def call(self, inputs):
        x = ops.cast(inputs, "float32") * self.input_scale
        if self.min_samples:
            short = ops.maximum(self.min_samples - ops.shape(x)[1], 0)
            x = ops.pad(x, [[0, 0], [0, short]])
        offset = (self.n_fft - self.win_length) // 2
        if offset:
            x = x[:, offset:-offset]
        spec = ops.conv(ops.expand_dims(x, -1), ops.convert_to_tensor(self._kernel), strides=self.hop_length,
                        padding="valid")
        bins = self.n_fft // 2 + 1
        real, imag = spec[..., :bins], spec[..., bins:]
        power = real * real + imag * imag
        mel = ops.matmul(power, ops.convert_to_tensor(self._mel))
        db = ops.log(ops.maximum(mel, 1e-10)) * 10.0 * _LOG10_E
        if self.top_db is not None:
            db = ops.maximum(db, ops.max(db, axis=(1, 2), keepdims=True) - self.top_db)
        return db * self.out_scale + self.out_offset

    def compute_output_shape(self, input_shape):
        samples = input_shape[1]
        if samples is None:
            return (input_shape[0], None, self.n_mels)
        samples = max(int(samples), self.min_samples)
        return (input_shape[0], frames_for(samples, self.n_fft, self.hop_length), self.n_mels)

    def get_config(self):
        config = super().get_config()
        config.update(sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.win_length,
                      hop_length=self.hop_length, n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
                      input_scale=self.input_scale, top_db=self.top_db, out_scale=self.out_scale,
                      out_offset=self.out_offset, min_samples=self.min_samples)
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class MelWindows(keras.layers.Layer):
    """Features ``(batch, frames, mels)`` to overlapping windows ``(batch, windows, window, mels, 1)``.

    Window ``i`` holds frames ``[i * step, i * step + window)``; ``windows = (frames - window) //
    step + 1``, the windows openWakeWord feeds its embedding model. Fewer than ``window`` frames
    give zero windows: pad the waveform first (``SpeechEmbeddingMel(min_samples=...)``).
    """

    def __init__(self, window=WINDOW_FRAMES, step=WINDOW_STEP, **kwargs):
        super().__init__(**kwargs)
        self.window = int(window)
        self.step = int(step)

    def call(self, inputs):
        count = ops.maximum((ops.shape(inputs)[1] - self.window) // self.step + 1, 0)
        index = ops.arange(count)[:, None] * self.step + ops.arange(self.window)[None, :]
        return ops.expand_dims(ops.take(inputs, index, axis=1), -1)

    def compute_output_shape(self, input_shape):
        frames = input_shape[1]
        count = None if frames is None else windows_for(frames, self.window, self.step)
        return (input_shape[0], count, self.window, input_shape[2], 1)

    def get_config(self):
        config = super().get_config()
        config.update(window=self.window, step=self.step)
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class FoldWindows(keras.layers.Layer):
    """``(batch, windows, *rest)`` to ``(batch * windows, *rest)`` (``rest`` must be static)."""

    def call(self, inputs):
        return ops.reshape(inputs, (-1,) + tuple(inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        if input_shape[0] is None or input_shape[1] is None:
            return (None,) + tuple(input_shape[2:])
        return (input_shape[0] * input_shape[1],) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="tlmulti")
class UnfoldWindows(keras.layers.Layer):
    """``[(batch * windows, ...), reference (batch, windows, ...)]`` to ``(batch, windows, features)``,
    flattening everything after the first axis of the folded tensor into ``features``."""

    def call(self, inputs):
        folded, reference = inputs
        features = int(np.prod(folded.shape[1:]))
        shape = ops.shape(reference)
        return ops.reshape(folded, (shape[0], shape[1], features))

    def compute_output_shape(self, input_shape):
        folded, reference = input_shape
        return (reference[0], reference[1], int(np.prod(folded[1:])))


@keras.saving.register_keras_serializable(package="tlmulti")
class FlooredLeakyReLU(keras.layers.Layer):
    """``max(leaky_relu(x, negative_slope), floor)``: speech_embedding's activation (0.2, -0.4)."""

    def __init__(self, negative_slope=0.2, floor=-0.4, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = float(negative_slope)
        self.floor = float(floor)

    def call(self, inputs):
        return ops.maximum(ops.leaky_relu(inputs, negative_slope=self.negative_slope), self.floor)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(negative_slope=self.negative_slope, floor=self.floor)
        return config
