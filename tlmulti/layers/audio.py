"""Audio layers: the log-mel frontend inside every speech model, and training-only augmentation.

Speech models take mono waveforms at the contract's sample rate (``(batch, samples)`` float32)
and compute their features themselves, so what trained is what serves and ``predict`` needs
only the audio files:

* :class:`LogMelSpectrogram`: STFT power, librosa's Slaney mel filterbank, log compression
  (dB, Whisper's log10 scaling, or natural log) and per-utterance mean/variance normalisation;
* :class:`WaveformAugment`: random speed perturbation, time shift, gain and additive noise;
* :class:`SpecAugment`: random time and frequency masks on the log-mel features.

The augmentation layers act only when called in training mode (``model.fit``); at inference
they return their input unchanged.

Example::

    import numpy as np
    from tlmulti.layers.audio import LogMelSpectrogram, SpecAugment
    x = np.random.default_rng(0).normal(size=(2, 16000)).astype("float32")
    feats = LogMelSpectrogram(sample_rate=16000, n_mels=40)(x)     # (2, 101, 40)
    masked = SpecAugment(time_masks=2, time_width=10)(feats, training=True)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tlmulti.choices import AUDIO_NORMALIZATIONS, AUDIO_SCALES



def stft_kernel(n_fft: int, win_length: int) -> np.ndarray:
    """Conv1D kernel ``(n_fft, 1, 2 * (n_fft // 2 + 1))``: a periodic Hann window of ``win_length``
    centred in ``n_fft``, times the DFT's cosine (real) and negative sine (imaginary) rows."""
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left:left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    k = np.arange(n_fft // 2 + 1)[None, :]
    t = np.arange(n_fft)[:, None]
    angle = 2 * np.pi * t * k / n_fft
    kernel = np.concatenate([window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)], axis=1)
    return kernel[:, None, :].astype(np.float32)


@keras.saving.register_keras_serializable(package="tlmulti")
class LogMelSpectrogram(keras.layers.Layer):
    """Waveforms ``(batch, samples)`` to log-mel features ``(batch, frames, n_mels)``.

    Matches :func:`tlmulti.data.audio.log_mel` (librosa, centred STFT with reflect padding,
    periodic Hann window, Slaney mel filters). The filterbank is recomputed from the config when
    a saved model loads, so it is not a weight.

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels, fmin, fmax: STFT and mel parameters
            (``win_length`` None = ``n_fft``; ``fmax`` None = Nyquist).
        scale: ``db`` (``10 log10`` power, floored ``top_db`` below each utterance's peak),
            ``whisper`` (``log10``, floored 8 below the peak, then ``(x + 4) / 4``, last frame
            dropped, exactly as ``keras_hub.layers.WhisperAudioConverter``) or ``log``.
        normalize: ``utterance`` (zero mean, unit variance per mel band over the utterance's
            frames: removes channel and speaker spectral tilt), ``global`` or ``none``.
    """

    def __init__(self, sample_rate=16000, n_fft=512, win_length=None, hop_length=160, n_mels=40, fmin=20.0,
                 fmax=None, scale="db", top_db=80.0, normalize="utterance", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if scale not in AUDIO_SCALES:
            raise ValueError(f"scale must be one of {AUDIO_SCALES}, got {scale!r}")
        if normalize not in AUDIO_NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {AUDIO_NORMALIZATIONS}, got {normalize!r}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length) if win_length else None
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = float(fmax) if fmax else None
        self.scale = scale
        self.top_db = float(top_db)
        self.normalize = normalize
        from tlmulti.data.audio import mel_filterbank

        self._filters = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax)
        self._dft = stft_kernel(self.n_fft, self.win_length or self.n_fft)

    def call(self, waveform):
        x = ops.cast(waveform, "float32")
        # Centred STFT as one strided convolution with the windowed DFT basis (real and imaginary
        # parts as output channels): the same numbers as an FFT, and an op every runtime has
        # (TFLite builtins, ONNX), so exports need no FFT kernel.
        pad = self.n_fft // 2
        x = ops.pad(x, [[0, 0], [pad, pad]], mode="reflect")
        spectrum = ops.conv(x[..., None], ops.convert_to_tensor(self._dft), strides=self.hop_length, padding="valid")
        bins = self.n_fft // 2 + 1
        power = ops.square(spectrum[..., :bins]) + ops.square(spectrum[..., bins:])
        if self.scale == "whisper":
            power = power[:, :-1, :]  # Whisper drops the last frame: 30 s -> 3,000 frames
        mel = ops.maximum(ops.matmul(power, ops.convert_to_tensor(self._filters)), 1e-10)
        if self.scale == "db":
            x = 10.0 * ops.log(mel) / np.log(10.0)
            x = ops.maximum(x, ops.max(x, axis=(1, 2), keepdims=True) - self.top_db)
        elif self.scale == "whisper":
            x = ops.log(mel) / np.log(10.0)
            x = ops.maximum(x, ops.max(x, axis=(1, 2), keepdims=True) - 8.0)
            x = (x + 4.0) / 4.0
        else:
            x = ops.log(mel + 1e-6)
        if self.normalize == "utterance":
            mean = ops.mean(x, axis=1, keepdims=True)
            std = ops.sqrt(ops.mean(ops.square(x - mean), axis=1, keepdims=True))
            x = (x - mean) / (std + 1e-3)
        elif self.normalize == "global":
            mean = ops.mean(x, axis=(1, 2), keepdims=True)
            std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True))
            x = (x - mean) / (std + 1e-3)
        return x

    def compute_output_shape(self, input_shape):
        samples = input_shape[-1]
        frames = None if samples is None else samples // self.hop_length + (self.scale != "whisper")
        return (input_shape[0], frames, self.n_mels)

    def get_config(self):
        config = super().get_config()
        config.update(sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.win_length,
                      hop_length=self.hop_length, n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
                      scale=self.scale, top_db=self.top_db, normalize=self.normalize)
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class WaveformAugment(keras.layers.Layer):
    """Random speed perturbation, time shift, gain and noise on ``(batch, samples)`` waveforms.

    Each example gets its own draw. Speed perturbation resamples around the clip's centre by a
    factor in ``[1 - speed, 1 + speed]`` (tempo and pitch change together, as in Kaldi's speed
    perturbation); the shift moves the audio by up to ``shift`` of the clip length, filling
    with silence; gain is uniform in ``[-gain_db, gain_db]`` dB; with probability ``noise_prob``
    white noise is added at an SNR uniform in ``snr_db``. Training mode only.

    Example::

        aug = WaveformAugment(speed=0.1, shift=0.1, gain_db=6, noise_prob=0.5, snr_db=(10, 30))
        y = aug(x, training=True)
    """

    def __init__(self, speed=0.0, shift=0.0, gain_db=0.0, noise_prob=0.0, snr_db=(10.0, 30.0), seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.speed = float(speed)
        self.shift = float(shift)
        self.gain_db = float(gain_db)
        self.noise_prob = float(noise_prob)
        self.snr_db = tuple(float(v) for v in snr_db)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, low, high):
        return keras.random.uniform((batch,), minval=low, maxval=high, seed=self.seed_generator)

    def call(self, x, training=None):
        if not training:
            return x
        x = ops.cast(x, "float32")
        batch = ops.shape(x)[0]
        length = x.shape[-1] if x.shape[-1] is not None else ops.shape(x)[-1]
        if self.speed or self.shift:
            centre = ops.cast(length, "float32") / 2.0
            factor = self._uniform(batch, 1.0 - self.speed, 1.0 + self.speed) if self.speed else ops.ones((batch,))
            offset = (self._uniform(batch, -self.shift, self.shift) * ops.cast(length, "float32")
                      if self.shift else ops.zeros((batch,)))
            t = ops.cast(ops.arange(length), "float32")[None, :]
            pos = centre + (t - centre) * factor[:, None] - offset[:, None]
            i0 = ops.floor(pos)
            frac = pos - i0
            i0 = ops.cast(i0, "int32")
            valid = ops.cast(ops.logical_and(i0 >= 0, i0 < length - 1), "float32")
            a = ops.take_along_axis(x, ops.clip(i0, 0, length - 1), axis=1)
            b = ops.take_along_axis(x, ops.clip(i0 + 1, 0, length - 1), axis=1)
            x = (a * (1.0 - frac) + b * frac) * valid
        if self.gain_db:
            gain = self._uniform(batch, -self.gain_db, self.gain_db)
            x = x * ops.power(10.0, gain / 20.0)[:, None]
        if self.noise_prob:
            snr = self._uniform(batch, self.snr_db[0], self.snr_db[1])
            power = ops.mean(ops.square(x), axis=1)
            std = ops.sqrt(power / ops.power(10.0, snr / 10.0) + 1e-12)
            use = ops.cast(self._uniform(batch, 0.0, 1.0) < self.noise_prob, "float32")
            noise = keras.random.normal(ops.shape(x), seed=self.seed_generator)
            x = x + noise * (std * use)[:, None]
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(speed=self.speed, shift=self.shift, gain_db=self.gain_db, noise_prob=self.noise_prob,
                      snr_db=list(self.snr_db), seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="tlmulti")
class SpecAugment(keras.layers.Layer):
    """SpecAugment masks on ``(batch, frames, bands)`` features (Park et al., 2019), training only.

    ``time_masks`` masks of up to ``time_width`` frames and ``freq_masks`` masks of up to
    ``freq_width`` bands, each example drawn independently; masked values become the
    utterance's mean (zero after per-utterance normalisation).
    """

    def __init__(self, time_masks=2, time_width=10, freq_masks=2, freq_width=6, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.time_masks = int(time_masks)
        self.time_width = int(time_width)
        self.freq_masks = int(freq_masks)
        self.freq_width = int(freq_width)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _masks(self, batch, size, count, width):
        """(batch, size) float mask, 1 where any of ``count`` random bands of width <= ``width`` is."""
        keep = ops.zeros((batch, size))
        idx = ops.cast(ops.arange(size), "float32")[None, :]
        for _ in range(count):
            w = ops.floor(keras.random.uniform((batch,), 0.0, width + 1.0, seed=self.seed_generator))
            start = ops.floor(keras.random.uniform((batch,), 0.0, 1.0, seed=self.seed_generator)
                              * ops.maximum(ops.cast(size, "float32") - w, 1.0))
            inside = ops.logical_and(idx >= start[:, None], idx < (start + w)[:, None])
            keep = ops.maximum(keep, ops.cast(inside, "float32"))
        return keep

    def call(self, x, training=None):
        if not training or (not self.time_masks and not self.freq_masks):
            return x
        batch = ops.shape(x)[0]
        frames = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        bands = x.shape[2]
        mask = ops.zeros_like(x)
        if self.time_masks and self.time_width:
            mask = ops.maximum(mask, self._masks(batch, frames, self.time_masks, self.time_width)[:, :, None])
        if self.freq_masks and self.freq_width:
            mask = ops.maximum(mask, self._masks(batch, bands, self.freq_masks, self.freq_width)[:, None, :])
        fill = ops.mean(x, axis=(1, 2), keepdims=True)
        return x * (1.0 - mask) + fill * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(time_masks=self.time_masks, time_width=self.time_width, freq_masks=self.freq_masks,
                      freq_width=self.freq_width, seed=self.seed)
        return config
