"""The pictures and sounds of ``report.html``, rendered in memory: training curves and the
confusion matrix as PNG (matplotlib's Agg canvas, no pyplot and no global backend change),
example images as PNG thumbnails (Pillow) and audio as 16-bit PCM WAV (the standard ``wave``
module). Every function returns bytes, or None when there is nothing to draw."""

from __future__ import annotations

import io
import math
import wave

import numpy as np

THUMB_MAX = 160  # longer side of an image thumbnail, in pixels (larger images are downscaled)
THUMB_MIN = 96  # tiny images (28x28) are upscaled, nearest-neighbour, to at least this
OVERLAY_MAX = 1024  # longer side of an overlay panel (kept as given below this)
DEFAULT_SAMPLE_RATE = 16000


def figure():
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig


def fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def curves_png(history: list[dict]) -> bytes | None:
    rows = [r for r in history if isinstance(r, dict) and "epoch" in r]
    if not rows:
        return None
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    skip = {"phase", "epoch", "loss", "learning_rate", "lr"}
    metric = [k for k in keys if k not in skip and not k.startswith("val_")][:1]
    plot_keys = (["loss"] if "loss" in keys or "val_loss" in keys else []) + metric
    if not plot_keys:
        return None

    def series(key):
        out = []
        for r in rows:
            v = r.get(key)
            out.append(float(v) if isinstance(v, (int, float)) and v is not None else np.nan)
        return out

    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = figure()
    fig.set_size_inches(5.2 * len(plot_keys), 3.6)
    axes = fig.subplots(1, len(plot_keys), squeeze=False)[0]
    spans = []  # (phase name, first epoch, last epoch)
    for r in rows:
        phase = str(r.get("phase", ""))
        if spans and spans[-1][0] == phase:
            spans[-1][2] = r["epoch"]
        else:
            spans.append([phase, r["epoch"], r["epoch"]])
    for ax, key in zip(axes, plot_keys):
        if any(key in r for r in rows):
            ax.plot(epochs, series(key), "o-", ms=3, label=f"train {key}")
        if any(f"val_{key}" in r for r in rows):
            ax.plot(epochs, series(f"val_{key}"), "o-", ms=3, label=f"val {key}")
        for prev in spans[:-1]:
            ax.axvline(prev[2] + 0.5, color="grey", ls="--", lw=1)
        if len(spans) > 1 or spans[0][0]:
            for phase, first, last in spans:
                ax.text((first + last) / 2, 1.01, phase, transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color="dimgrey", clip_on=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(key, loc="left", fontsize=10, pad=14)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_png(fig)


def compact(n: float) -> str:
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def confusion_png(cm, classes: list[str], title: str, shares: bool) -> bytes:
    """The row-normalised matrix; each cell says its share of the row (``shares``) or its count."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = min(14.0, max(4.5, 0.5 * n + 2.5))
    fig = figure()
    fig.set_size_inches(size, size * 0.9)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fontsize = 9 if n <= 10 else (7 if n <= 20 else 5)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=fontsize)
        ax.set_yticks(range(n), classes, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                text = f"{100 * share[i, j]:.0f}%" if shares else compact(cm[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig_png(fig)


def as_uint8(image) -> np.ndarray | None:
    a = np.asarray(image)
    if a.size == 0 or a.ndim not in (2, 3):
        return None
    if a.ndim == 3:
        if a.shape[-1] in (1, 2):  # grey, or grey and alpha
            a = a[..., 0]
        elif a.shape[-1] > 4:
            a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.nan_to_num(a.astype(np.float64))
        if a.max(initial=0) <= 1.0 and a.min(initial=0) >= 0.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).round().astype(np.uint8)
    return a


def image_png(image, *, thumbnail: bool) -> bytes | None:
    from PIL import Image

    a = as_uint8(image)
    if a is None:
        return None
    pil = Image.fromarray(a)
    w, h = pil.size
    longer = max(w, h)
    limit = THUMB_MAX if thumbnail else OVERLAY_MAX
    if longer > limit:
        scale = limit / longer
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    elif thumbnail and longer < THUMB_MIN:
        factor = math.ceil(THUMB_MIN / longer)
        pil = pil.resize((w * factor, h * factor), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def wav_bytes(audio, sample_rate) -> bytes | None:
    a = np.asarray(audio)
    if a.size == 0:
        return None
    if a.ndim == 2:
        a = a.mean(axis=1) if a.shape[1] <= 8 < a.shape[0] else a.ravel()
    a = a.ravel()
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64) / max(1, np.iinfo(a.dtype).max)
    a = np.clip(np.nan_to_num(a.astype(np.float64)), -1.0, 1.0)
    pcm = (a * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate or DEFAULT_SAMPLE_RATE))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
