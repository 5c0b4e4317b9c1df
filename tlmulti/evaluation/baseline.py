"""The classic baseline every classification run is compared with: scikit-learn's logistic
regression on features anyone could compute by hand, fitted on the training split.

* images: the pixels downsampled to 16 x 16 (area averaging), standardised;
* texts: TF-IDF of word 1- and 2-grams (sublinear term frequency);
* speech: the mean and standard deviation over time of 40 log-mel bands;
* segmentation: each pixel on its own, classified by scikit-learn's quadratic discriminant (one
  Gaussian per class, a supervised Gaussian mixture) on its intensity and its Gaussian blur
  (sigma 2 px), fitted on :data:`MAX_PIXELS` pixels sampled from the training tiles.

Multi-label data gets one logistic regression per label. At most :data:`MAX_TRAIN` training
examples are used (a seeded sample), so the baseline costs seconds, not minutes.

Example::

    from tlmulti.evaluation.baseline import fit, probabilities
    model = fit(features, labels, kind="dense", multilabel=False, seed=0)
    probs = probabilities(model, features, n_outputs=10, multilabel=False)
"""

from __future__ import annotations

import numpy as np

MAX_TRAIN = 4000
MAX_PIXELS = 200_000
PIXELS = 16
MEL_BANDS = 40
BLUR = 2.0

METHODS = {
    "pixels": f"logistic regression on {PIXELS}x{PIXELS} pixels",
    "tfidf": "logistic regression on TF-IDF word 1-2-grams",
    "log_mel": f"logistic regression on {MEL_BANDS} log-mel band means and deviations",
    "pixel_gaussian": f"per-pixel Gaussian classes (quadratic discriminant) on intensity and its {BLUR:g} px blur",
}


def pixel_features(x, batch: int = 256) -> np.ndarray:
    """``(N, 16 * 16 * C)`` float32: images ``(N, H, W, C)`` (arrays or lazily read files)
    averaged down to 16 x 16, values 0..1."""
    import tensorflow as tf

    out = []
    for start in range(0, len(x), batch):
        chunk = np.asarray(x[start:start + batch], np.float32)
        small = tf.image.resize(chunk, (PIXELS, PIXELS), method="area", antialias=True).numpy()
        out.append(small.reshape(len(chunk), -1) / 255.0)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def pixel_intensity_features(x, batch: int = 64) -> np.ndarray:
    """``(N, H, W, 2C)`` float32: per pixel its channels (0..1) and their Gaussian blur."""
    from scipy.ndimage import gaussian_filter

    out = []
    for start in range(0, len(x), batch):
        chunk = np.asarray(x[start:start + batch], np.float32) / 255.0
        blurred = gaussian_filter(chunk, sigma=(0, BLUR, BLUR, 0), mode="reflect")
        out.append(np.concatenate([chunk, blurred], axis=-1))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 0), np.float32)


def log_mel_features(x, sample_rate: int) -> np.ndarray:
    """``(N, 80)``: per clip, the mean and standard deviation over frames of 40 log-mel bands."""
    import librosa

    rows = []
    for i in range(len(x)):
        wave = np.asarray(x[i], np.float32).reshape(-1)
        mel = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=512, hop_length=max(sample_rate // 100, 1),
                                             n_mels=MEL_BANDS, power=2.0)
        log = np.log(mel + 1e-6)
        rows.append(np.concatenate([log.mean(axis=1), log.std(axis=1)]))
    return np.asarray(rows, np.float32)


def sample(n: int, seed: int, limit: int = MAX_TRAIN) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``n`` examples (all when there are fewer)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def fit(features, y, kind: str, multilabel: bool, seed: int):
    """A fitted scikit-learn pipeline: ``kind`` ``dense`` (standardised numbers), ``text`` or
    ``pixels`` (``(N, H, W, F)`` features and ``(N, H, W)`` class maps)."""
    if kind == "pixels":
        from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

        flat, labels = features.reshape(-1, features.shape[-1]), np.asarray(y).reshape(-1)
        keep = sample(len(labels), seed, MAX_PIXELS)
        return QuadraticDiscriminantAnalysis(reg_param=1e-3).fit(flat[keep], labels[keep])
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    linear = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
    if multilabel:
        linear = OneVsRestClassifier(linear)
    first = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=100_000) if kind == "text" \
        else StandardScaler()
    model = make_pipeline(first, linear)
    model.fit(list(features) if kind == "text" else features, np.asarray(y))
    return model


def probabilities(model, features, n_outputs: int, multilabel: bool, kind: str = "dense") -> np.ndarray:
    """``(N, n_outputs)`` probabilities with columns in class-id order (a class the training
    sample lacked gets 0); ``(N, H, W, n_outputs)`` for ``pixels``."""
    if kind == "pixels":
        flat = features.reshape(-1, features.shape[-1])
        out = np.zeros((len(flat), n_outputs), np.float32)
        for start in range(0, len(flat), 1_000_000):
            out[start:start + 1_000_000, np.asarray(model.classes_, int)] = model.predict_proba(
                flat[start:start + 1_000_000])
        return out.reshape(*features.shape[:-1], n_outputs)
    probs = np.asarray(model.predict_proba(list(features) if kind == "text" else features), np.float64)
    if multilabel:
        return probs
    out = np.zeros((len(probs), n_outputs))
    out[:, np.asarray(model.classes_, int)] = probs
    return out
