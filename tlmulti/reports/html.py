"""``report.html``: one self-contained page that explains a finished run to a person.

After training, a run folder holds ``metrics.json``, ``history.csv``, the data summary and a few
PNGs; reading them side by side is work, and a newcomer does not know where to look first. This
module writes a single HTML page that puts it all together, in the order a careful practitioner
reads a run: the headline result, the headline metrics on validation and test, the classes and
groups the model does worst on, the training curves (with the phase boundaries marked), the
confusion matrix, the data summary with its warnings, the test examples the model got most wrong
(as fastai's ``plot_top_losses``) and, at the bottom, what each training phase did and how long
it took.

The page has no external parts: images are PNG data URIs rendered in memory with matplotlib's
Agg backend and Pillow, audio is a 16-bit PCM WAV data URI written with the standard ``wave``
module, the CSS is inline and there is no JavaScript. It opens from a file, offline, in any
browser, and can be mailed or attached to an issue as it is. Everything that comes from the user
(class names, group values, file names, texts, warnings) is HTML-escaped. Parts that are missing
(no history, no examples, no summary, no test set) are left out of the page; a part whose data is
malformed is replaced by a one-line note rather than failing the report.

Example::

    import json
    from tlmulti.reports.html import write_report

    metrics = json.loads((run_dir / "metrics.json").read_text())
    path = write_report(run_dir, title="fashion_mnist / mobilenet_v3_small",
                        headline="Test accuracy 91.2% after 2 phases (head, then top blocks)",
                        task="image_classification", metrics=metrics, history=history,
                        summary=summary, examples=top_losses, classes=classes)
    print(f"open file://{path}")
"""

from __future__ import annotations

import base64
import html
import io
import math
import wave
from pathlib import Path

import numpy as np

THUMB_MAX = 160  # longer side of an image thumbnail, in pixels (larger images are downscaled)
THUMB_MIN = 96  # tiny images (28x28) are upscaled, nearest-neighbour, to at least this
OVERLAY_MAX = 1024  # longer side of an overlay panel (kept as given below this)
TEXT_CHARS = 400  # example texts are cut to this many characters
MAX_EXAMPLES = 64  # most-wrong examples shown
DEFAULT_SAMPLE_RATE = 16000


# ---------------------------------------------------------------------------------------------
# small helpers


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value) -> str:
    """A number as a person reads it: ints with separators, floats to 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "—"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_num(v) if isinstance(v, (int, float)) else str(v) for v in value) or "—"
    return str(value)


def _cell(value) -> str:
    return _esc(_num(value))


def _is_score(value) -> bool:
    return isinstance(value, (float, np.floating)) and not math.isnan(float(value)) and 0.0 <= value <= 1.0


def _bar_cell(value) -> str:
    """A table cell with a light bar behind scores in [0, 1], so weak rows stand out."""
    if not _is_score(value):
        return f"<td>{_cell(value)}</td>"
    pct = round(100 * float(value), 1)
    return (f'<td class="bar" style="background:linear-gradient(90deg,#cfe3fb {pct}%,'
            f'transparent {pct}%)">{_cell(value)}</td>')


def _table(header: list[str], rows: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{_esc(alt)}" src="{_png_uri(data)}">'


def _figure():
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as ``a.b.c`` keys; very long dicts are cut to their 8 largest entries."""
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and len(v) <= 12:
            rows.extend(_flatten(v, key + "."))
        elif isinstance(v, dict) and v:
            top = sorted(v.items(), key=lambda kv: -kv[1] if isinstance(kv[1], (int, float)) else 0)[:8]
            rows.append((key, ", ".join(f"{a}: {_num(b)}" for a, b in top) + f" (+{len(v) - 8} more)"))
        else:
            rows.append((key, v))
    return rows


def _split_name(metrics: dict) -> tuple[str, dict]:
    """The split the detailed sections describe: test when there is one, else validation."""
    for name in ("test", "val"):
        m = metrics.get(name)
        if isinstance(m, dict) and m:
            return name, m
    return "", {}


def _is_segmentation(task: str, metrics: dict) -> bool:
    for name in ("test", "val"):
        m = metrics.get(name) or {}
        if "mean_iou" in m or "mean_dice" in m:
            return True
        if "accuracy" in m or "macro_f1" in m:
            return False
    return "segment" in (task or "").lower()


# ---------------------------------------------------------------------------------------------
# sections


def _headline_metrics(metrics: dict, segmentation: bool) -> str:
    splits = [(n, metrics[n]) for n in ("val", "test") if isinstance(metrics.get(n), dict) and metrics[n]]
    if not splits:
        return ""
    if segmentation:
        rows_spec = [("mean Dice (foreground)", "mean_dice"), ("mean IoU (foreground)", "mean_iou"),
                     ("mean IoU (with background)", "mean_iou_with_background"),
                     ("pixel accuracy", "pixel_accuracy")]
    else:
        rows_spec = [("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("F1 (positive class)", "f1"),
                     ("loss (cross-entropy)", "loss"), ("examples", "n")]
    rows = []
    for label, key in rows_spec:
        if not any(key in m for _, m in splits):
            continue
        cells = "".join(f"<td>{_cell(m.get(key))}</td>" for _, m in splits)
        rows.append(f"<tr><th>{_esc(label)}</th>{cells}</tr>")
    if any("worst_group" in m for _, m in splits):
        cells = ""
        for _, m in splits:
            w = m.get("worst_group")
            if isinstance(w, dict):
                column = m.get("group_by", "group")
                cells += (f"<td>{_esc(w.get('group'))} <span class='muted'>({_esc(column)})</span>: "
                          f"{_cell(w.get('accuracy'))}</td>")
            else:
                cells += "<td>—</td>"
        rows.append(f"<tr><th>worst group accuracy</th>{cells}</tr>")
    header = ["metric"] + [{"val": "validation", "test": "test"}[n] for n, _ in splits]
    return _section("metrics", "Headline metrics", _table(header, rows, "metrics"))


def _per_class(metrics: dict, segmentation: bool) -> str:
    name, m = _split_name(metrics)
    per = m.get("per_class")
    if not isinstance(per, dict) or not per:
        return ""
    if segmentation:
        preferred = ["iou", "dice", "precision", "recall", "pixels"]
        score = "iou"
    else:
        preferred = ["precision", "recall", "f1", "support"]
        score = "f1"
    seen = [k for k in preferred if any(k in (v or {}) for v in per.values())]
    rows = []
    for cls, values in per.items():
        values = values or {}
        cells = "".join(_bar_cell(values.get(k)) if k in ("precision", "recall", "f1", "iou", "dice")
                        else f"<td>{_cell(values.get(k))}</td>" for k in seen)
        rows.append(f"<tr><th>{_esc(cls)}</th>{cells}</tr>")
    scored = [(v.get(score), c) for c, v in per.items() if _is_score((v or {}).get(score))]
    note = ""
    if len(scored) > 1:
        low, worst = min(scored)
        note = (f"<p>Weakest class: <b>{_esc(worst)}</b> ({_esc(score)} {_cell(low)}). Read recall as "
                "\"how many of this class were found\" and precision as \"how many predictions of it "
                "were right\".</p>")
    body = note + f'<div class="scroll">{_table(["class"] + seen, rows)}</div>'
    return _section("classes", f"Per class ({_split_label(name)})", body)


def _split_label(name: str) -> str:
    return {"val": "validation", "test": "test"}.get(name, name)


def _group_tables(metrics: dict) -> str:
    name, m = _split_name(metrics)
    tables: dict[str, dict] = {}
    if isinstance(m.get("by_group"), dict):
        tables[str(m.get("group_by", "group"))] = {"by_group": m["by_group"], "worst_group": m.get("worst_group")}
    for column, entry in (m.get("groups") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("by_group"), dict):
            tables.setdefault(str(column), entry)
    if not tables:
        return ""
    parts = []
    for column, entry in tables.items():
        worst = entry.get("worst_group") or {}
        worst_name = worst.get("group") if isinstance(worst, dict) else None
        rows = []
        for group, values in entry["by_group"].items():
            values = values if isinstance(values, dict) else {"accuracy": values}
            cls = ' class="worst"' if worst_name is not None and str(group) == str(worst_name) else ""
            rows.append(f"<tr{cls}><th>{_esc(group)}</th>{_bar_cell(values.get('accuracy'))}"
                        f"<td>{_cell(values.get('n'))}</td></tr>")
        head = f"<h3>by {_esc(column)}</h3>"
        if worst_name is not None:
            head += (f"<p class='worstline'>Worst group: <b>{_esc(worst_name)}</b>, accuracy "
                     f"{_cell(worst.get('accuracy'))}</p>")
        parts.append(f'<div class="group">{head}<div class="scroll">'
                     f'{_table([column, "accuracy", "examples"], rows)}</div></div>')
    body = ("<p>Accuracy is an average; the group the model serves worst is what a user of that "
            "group sees.</p>" + '<div class="groups">' + "".join(parts) + "</div>")
    return _section("groups", f"Per group ({_split_label(name)})", body)


def _curves_png(history: list[dict]) -> bytes | None:
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
    fig = _figure()
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
    return _fig_png(fig)


def _curves(history) -> str:
    if not history:
        return ""
    png = _curves_png(list(history))
    if png is None:
        return ""
    body = ("<p>Dashed lines mark where one training phase ends and the next begins (names above). "
            "Validation loss rising while training loss falls is overfitting.</p>"
            + _img(png, "training curves", "plot"))
    return _section("curves", "Training curves", body)


def _compact(n: float) -> str:
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def _confusion_png(cm, classes: list[str], title: str, segmentation: bool) -> bytes:
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = min(14.0, max(4.5, 0.5 * n + 2.5))
    fig = _figure()
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
                text = f"{100 * share[i, j]:.0f}%" if segmentation else _compact(cm[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _fig_png(fig)


def _confusion(metrics: dict, classes, segmentation: bool) -> str:
    name, m = _split_name(metrics)
    cm = m.get("confusion_matrix")
    if cm is None:
        return ""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        return ""
    names = list(classes or m.get("per_class", {}).keys())
    if len(names) != cm.shape[0]:
        names = [str(i) for i in range(cm.shape[0])]
    kind = "Pixel confusion" if segmentation else "Confusion"
    title = f"{kind} matrix ({_split_label(name)})"
    png = _confusion_png(cm, [str(c) for c in names], title, segmentation)
    if segmentation:
        text = ("<p>Each row is a true class; the colour and the number are the share of its pixels "
                "predicted as each class.</p>")
    else:
        text = ("<p>Each row is a true class; the numbers are counts, the colour is the share of the "
                "row. Off-diagonal cells are the confusions worth looking at.</p>")
    return _section("confusion", title, text + _img(png, title, "plot cm"))


def _summary(summary: dict | None, data: dict | None) -> str:
    if not summary and not data:
        return ""
    summary = summary or {}
    parts = []
    if isinstance(data, dict) and data:
        parts.append("<p>" + " · ".join(f"{_esc(k)} <b>{_cell(v)}</b>" for k, v in data.items()) + "</p>")
    splits = summary.get("splits") or {}
    if splits:
        names = list(splits)
        classes: list[str] = []
        for entry in splits.values():
            classes += [c for c in (entry or {}).get("per_class") or {} if c not in classes]
        rows = []
        for c in classes:
            cells = "".join(f"<td>{_cell(((splits[s] or {}).get('per_class') or {}).get(c))}</td>" for s in names)
            rows.append(f"<tr><th>{_esc(c)}</th>{cells}</tr>")
        total = "".join(f"<td><b>{_cell((splits[s] or {}).get('n'))}</b></td>" for s in names)
        rows.append(f'<tr class="total"><th>all</th>{total}</tr>')
        parts.append("<h3>Examples per split</h3>"
                     f'<div class="scroll">{_table(["class"] + names, rows)}</div>')
    inputs = summary.get("inputs") or {}
    if inputs:
        rows = [f"<tr><th>{_esc(k)}</th><td>{_cell(v)}</td></tr>" for k, v in _flatten(inputs)]
        parts.append("<h3>Inputs</h3><p>What was measured on the training inputs, against what the "
                     "model is fed.</p>" + _table(["measure", "value"], rows, "kv"))
    if not parts:
        return ""
    return _section("data", "Data", "".join(parts))


def _warnings(summary: dict | None) -> str:
    warnings = [w for w in (summary or {}).get("warnings") or [] if w]
    if not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return (f'<div class="warnings" role="alert"><b>Data warnings ({len(warnings)})</b>'
            f"<ul>{items}</ul></div>")


# ---------------------------------------------------------------------------------------------
# examples


def _as_uint8(image) -> np.ndarray | None:
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


def _image_png(image, *, thumbnail: bool) -> bytes | None:
    from PIL import Image

    a = _as_uint8(image)
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


def _wav_bytes(audio, sample_rate) -> bytes | None:
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


def _example_card(ex: dict) -> str:
    kind = str(ex.get("kind") or "image")
    media = ""
    wide = False
    if ex.get("image") is not None and kind in ("image", "overlay"):
        png = _image_png(ex["image"], thumbnail=kind != "overlay")
        if png is not None:
            cls = "overlay" if kind == "overlay" else "thumb"
            media = _img(png, str(ex.get("name", "")), cls)
            wide = kind == "overlay"
    if ex.get("text") is not None:
        text = str(ex["text"])
        if len(text) > TEXT_CHARS:
            text = text[:TEXT_CHARS].rstrip() + " …"
        media += f'<div class="text">{_esc(text)}</div>'
    if ex.get("audio") is not None:
        wav = _wav_bytes(ex["audio"], ex.get("sample_rate"))
        if wav is not None:
            uri = "data:audio/wav;base64," + base64.b64encode(wav).decode("ascii")
            media += f'<audio controls preload="none" src="{uri}"></audio>'
    prob = ex.get("probability")
    prob_text = f"{100 * float(prob):.1f}%" if isinstance(prob, (int, float)) else "—"
    caption = f'<div class="name" title="{_esc(ex.get("name", ""))}">{_esc(ex.get("name", ""))}</div>'
    if ex.get("true") not in (None, ""):
        caption += f'<div>true <b>{_esc(ex["true"])}</b></div>'
    if ex.get("predicted") not in (None, ""):
        shown = f" ({_esc(prob_text)})" if prob is not None else ""
        caption += f'<div>predicted <b class="bad">{_esc(ex["predicted"])}</b>{shown}</div>'
    if ex.get("loss") is not None:
        caption += f'<div class="muted">loss {_cell(ex.get("loss"))}</div>'
    klass = "card wide" if wide else "card"
    return f'<div class="{klass}">{media}{caption}</div>'


def _examples(examples) -> str:
    if not examples:
        return ""
    shown = [e for e in list(examples)[:MAX_EXAMPLES] if isinstance(e, dict)]
    if not shown:
        return ""
    cards = "".join(_example_card(e) for e in shown)
    more = f" (the first {len(shown)} of {len(examples)})" if len(examples) > len(shown) else ""
    body = (f"<p>The test examples with the highest loss{_esc(more)}: confident mistakes first. Look "
            "for wrong labels, ambiguous inputs and a pattern in what is confused.</p>"
            f'<div class="grid">{cards}</div>')
    return _section("examples", "Most wrong examples", body)


# ---------------------------------------------------------------------------------------------
# footer


def _adaptation_section(adaptation: dict) -> str:
    """Which adaptation method was kept, and every candidate's source-validation metric, guard
    and label-free target scores."""
    guard = adaptation.get("guard") if isinstance(adaptation.get("guard"), dict) else {}
    metric = guard.get("metric", "metric")
    head = (f"<h3>Domain adaptation</h3><p>Method <b>{_esc(adaptation.get('method'))}</b>, kept "
            f"<b>{_esc(adaptation.get('chosen'))}</b>; {_cell(adaptation.get('target_examples'))} unlabelled target "
            f"examples; guard: source validation {_esc(metric)} may fall by at most {_cell(guard.get('margin'))}. "
            f"Label-free score: {_esc(adaptation.get('criterion', ''))}.</p>")
    rows = []
    for name, c in (adaptation.get("candidates") or {}).items():
        if not isinstance(c, dict):
            continue
        label = "source-only" if name == "none" else name
        if "skipped" in c:
            rows.append(f"<tr><th>{_esc(label)}</th><td colspan=5>not applicable: {_esc(c['skipped'])}</td></tr>")
            continue
        rows.append(f"<tr><th>{_esc(label)}</th><td>{_cell(c.get('source_val'))}</td>"
                    f"<td>{_cell(c.get('target_entropy'))}</td><td>{_cell(c.get('target_balance_kl'))}</td>"
                    f"<td>{_cell(c.get('score'))}</td><td>{_esc(c.get('guard', '—'))}</td></tr>")
    if not rows:
        return head
    return head + _table(["method", f"source val {metric}", "target entropy", "balance KL", "score", "guard"], rows)


def _footer(metrics: dict) -> str:
    timing = metrics.get("timing") or {}
    phases = [p for p in metrics.get("phases") or [] if isinstance(p, dict)]
    if not timing and not phases:
        return ""
    parts = []
    if timing:
        bits = []
        if "train_seconds" in timing:
            bits.append(f"training <b>{_cell(timing['train_seconds'])} s</b>")
        if "total_seconds" in timing:
            bits.append(f"total {_cell(timing['total_seconds'])} s")
        per = timing.get("phase_seconds") or []
        if per:
            names = [p.get("name", f"phase {i}") for i, p in enumerate(phases)]
            names += [f"phase {i}" for i in range(len(names), len(per))]
            bits.append("per phase: " + ", ".join(f"{_esc(n)} {_cell(s)} s" for n, s in zip(names, per)))
        parts.append("<p>Time: " + " · ".join(bits) + "</p>")
    adaptation = metrics.get("adaptation")
    if isinstance(adaptation, dict) and adaptation:
        parts.append(_adaptation_section(adaptation))
    if phases:
        rows = []
        for p in phases:
            epochs = _cell(p.get("epochs_run"))
            if p.get("epochs_planned") is not None:
                epochs += f" / {_cell(p.get('epochs_planned'))}"
            groups = p.get("unfrozen_groups")
            groups_text = _num(groups) if groups else "none (head only)"
            rows.append(f"<tr><th>{_esc(p.get('name', ''))}</th><td>{epochs}</td>"
                        f"<td>{_cell(p.get('learning_rate'))}</td><td>{_esc(groups_text)}</td>"
                        f"<td>{_cell(p.get('batchnorm'))}</td><td>{_cell(p.get('feature_cache'))}</td>"
                        f"<td>{_cell(p.get('seconds'))}</td></tr>")
        parts.append("<h3>Training phases</h3>" + _table(
            ["phase", "epochs run / planned", "learning rate", "unfrozen groups", "batchnorm",
             "feature cache", "seconds"], rows))
    return '<footer id="phases">' + "".join(parts) + "</footer>"


# ---------------------------------------------------------------------------------------------
# page


def _section(anchor: str, heading: str, body: str) -> str:
    return f'<section id="{_esc(anchor)}"><h2>{_esc(heading)}</h2>{body}</section>'


CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
  background:#f4f5f7;color:#1d2330;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 20px 8px}
header .title{font-size:15px;color:#5a6272;margin:0}
header .task{display:inline-block;font-size:12px;background:#e3e8f0;border-radius:10px;padding:1px 8px;
  margin-left:6px;color:#3b4456}
h1.headline{font-size:30px;margin:6px 0 4px;line-height:1.2}
nav{font-size:13px;margin:6px 0 14px}nav a{color:#2f5fae;margin-right:12px;text-decoration:none}
section,footer{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px 18px;margin:14px 0}
h2{font-size:19px;margin:0 0 8px}h3{font-size:15px;margin:12px 0 6px}
p{margin:4px 0 10px}.muted{color:#6b7384}
table{border-collapse:collapse;font-size:13.5px;margin:4px 0 8px}
th,td{border-bottom:1px solid #e6e9ef;padding:4px 12px 4px 8px;text-align:right;white-space:nowrap}
th:first-child{text-align:left}thead th{background:#f0f2f6;font-weight:600}
tbody th{font-weight:500}tr.total th,tr.total td{border-top:2px solid #cdd3dd}
table.metrics td{font-size:16px;font-weight:600;min-width:120px}
table.kv td{text-align:left;white-space:normal}
tr.worst th,tr.worst td{background-color:#fde8e8}
.worstline{color:#a32020}
.scroll{max-height:520px;overflow:auto;display:inline-block;max-width:100%}
.groups{display:flex;flex-wrap:wrap;gap:8px 40px}
.warnings{background:#fff6db;border:1px solid #e9c46a;border-left:6px solid #e0a100;border-radius:8px;
  padding:10px 16px;margin:14px 0}
.warnings ul{margin:6px 0 0 0;padding-left:20px}
img.plot{max-width:100%;height:auto;display:block}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e3c3c3;border-radius:6px;padding:8px;width:188px;font-size:12.5px;background:#fffafa}
.card.wide{width:auto;max-width:100%}
.card img{display:block;margin:0 auto 6px;max-width:100%;height:auto}
img.thumb{image-rendering:pixelated}
.card .name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11.5px;overflow:hidden;
  text-overflow:ellipsis;white-space:nowrap;color:#4a5262}
.card .text{font-size:12px;white-space:pre-wrap;word-break:break-word;max-height:180px;overflow:auto;
  background:#f7f7f9;border-radius:4px;padding:4px 6px;margin-bottom:6px}
.card audio{width:100%;margin-bottom:6px}
.bad{color:#b42318}
footer{font-size:13.5px;color:#3b4456;margin-bottom:24px}
"""


def write_report(run_dir, *, title: str, headline: str, task: str, metrics: dict, history: list[dict],
                 summary: dict | None = None, examples: list[dict] | None = None,
                 classes: list[str] | None = None) -> Path:
    """Write ``run_dir/report.html`` (one self-contained page) and return its path.

    ``metrics`` is the run's ``metrics.json`` content (``val``, ``test``, ``timing``, ``phases``,
    ``data``); ``history`` the per-epoch rows; ``summary`` the data summary; ``examples`` the test
    examples with the highest loss (``name``, ``true``, ``predicted``, ``probability``, ``loss``,
    ``kind`` and the ``image``, ``text`` or ``audio`` itself); ``classes`` the class names in
    label order (the confusion matrix's axes)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics if isinstance(metrics, dict) else {}
    segmentation = _is_segmentation(task, metrics)

    def guarded(name: str, build) -> str:
        try:
            return build()
        except Exception as exc:  # noqa: BLE001 - one malformed part must not cost the whole report
            return f'<p class="muted">The {_esc(name)} part could not be shown: {_esc(type(exc).__name__)}: {_esc(exc)}</p>'

    sections = [
        ("metrics", "metrics", guarded("headline metrics", lambda: _headline_metrics(metrics, segmentation))),
        ("classes", "per class", guarded("per-class", lambda: _per_class(metrics, segmentation))),
        ("groups", "groups", guarded("per-group", lambda: _group_tables(metrics))),
        ("curves", "curves", guarded("training curves", lambda: _curves(history))),
        ("confusion", "confusion", guarded("confusion matrix",
                                           lambda: _confusion(metrics, classes, segmentation))),
        ("data", "data", guarded("data summary", lambda: _summary(summary, metrics.get("data")))),
        ("examples", "most wrong", guarded("examples", lambda: _examples(examples))),
    ]
    footer = guarded("phases", lambda: _footer(metrics))
    links = [(a, label) for a, label, body in sections if body] + ([("phases", "phases")] if footer else [])
    nav = "<nav>" + "".join(f'<a href="#{a}">{_esc(label)}</a>' for a, label in links) + "</nav>"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header><p class="title">{_esc(title)}<span class="task">{_esc(task)}</span></p>'
        f'<h1 class="headline">{_esc(headline)}</h1></header>{nav}'
        + guarded("warnings", lambda: _warnings(summary))
        + "".join(body for _, _, body in sections)
        + footer
        + "</main></body></html>\n"
    )
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
