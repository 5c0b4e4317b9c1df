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
from pathlib import Path

import numpy as np

from tlmulti.reports.figures import confusion_png, curves_png, image_png, wav_bytes
from tlmulti.reports.highlight import highlighted, note
from tlmulti.reports.markup import bar_cell, cell, esc, flatten, img, is_score, num, section, table
from tlmulti.reports.model_card import to_html
from tlmulti.reports.sections import (adaptation_section, calibration_section, saliency_section, strategy_section,
                                      tune_section)
from tlmulti.reports.view import ReportView

TEXT_CHARS = 400  # example texts are cut to this many characters
MAX_EXAMPLES = 64  # most-wrong examples shown


# ---------------------------------------------------------------------------------------------
# small helpers


def _split_name(metrics: dict) -> tuple[str, dict]:
    """The split the detailed sections describe: test when there is one, else validation."""
    for name in ("test", "val"):
        m = metrics.get(name)
        if isinstance(m, dict) and m:
            return name, m
    return "", {}


# ---------------------------------------------------------------------------------------------
# sections


def _headline_metrics(metrics: dict, view: ReportView) -> str:
    splits = [(n, metrics[n]) for n in ("val", "test") if isinstance(metrics.get(n), dict) and metrics[n]]
    if not splits:
        return ""
    rows = []
    for label, key in view.metric_rows:
        if not any(key in m for _, m in splits):
            continue
        cells = "".join(f"<td>{cell(m.get(key))}</td>" for _, m in splits)
        rows.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    if any("worst_group" in m for _, m in splits):
        cells = ""
        for _, m in splits:
            w = m.get("worst_group")
            if isinstance(w, dict):
                column = m.get("group_by", "group")
                cells += (f"<td>{esc(w.get('group'))} <span class='muted'>({esc(column)})</span>: "
                          f"{cell(w.get('accuracy'))}</td>")
            else:
                cells += "<td>—</td>"
        rows.append(f"<tr><th>worst group accuracy</th>{cells}</tr>")
    header = ["metric"] + [{"val": "validation", "test": "test"}[n] for n, _ in splits]
    base = metrics.get("baseline") if isinstance(metrics.get("baseline"), dict) else {}
    base_splits = [(n, base[n]) for n, _ in splits if isinstance(base.get(n), dict)]
    note = ""
    if base_splits:
        keys = [key for _, key in view.metric_rows if any(key in m for _, m in splits)]
        rows = [r[:-5] + "".join(f"<td class='muted'>{cell(m.get(key))}</td>" for _, m in base_splits) + "</tr>"
                for r, key in zip(rows, keys)] + rows[len(keys):]
        header += [f"baseline {'validation' if n == 'val' else 'test'}" for n, _ in base_splits]
        note = (f"<p>Baseline: {esc(base.get('method'))}, fitted on the training split in {cell(base.get('seconds'))} s. "
                "A model that does not beat it is not using its pretraining.</p>")
    return section("metrics", "Headline metrics", table(header, rows, "metrics") + note)


def _per_class(metrics: dict, view: ReportView) -> str:
    name, m = _split_name(metrics)
    per = m.get("per_class")
    if not isinstance(per, dict) or not per:
        return ""
    score = view.per_class_score
    seen = [k for k in view.per_class_columns if any(k in (v or {}) for v in per.values())]
    rows = []
    for cls, values in per.items():
        values = values or {}
        cells = "".join(bar_cell(values.get(k)) if k in ("precision", "recall", "f1", "iou", "dice")
                        else f"<td>{cell(values.get(k))}</td>" for k in seen)
        rows.append(f"<tr><th>{esc(cls)}</th>{cells}</tr>")
    scored = [(v.get(score), c) for c, v in per.items() if is_score((v or {}).get(score))]
    note = ""
    if len(scored) > 1:
        low, worst = min(scored)
        note = (f"<p>Weakest class: <b>{esc(worst)}</b> ({esc(score)} {cell(low)}). Read recall as "
                "\"how many of this class were found\" and precision as \"how many predictions of it "
                "were right\".</p>")
    body = note + f'<div class="scroll">{table(["class"] + seen, rows)}</div>'
    return section("classes", f"Per class ({_split_label(name)})", body)


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
            rows.append(f"<tr{cls}><th>{esc(group)}</th>{bar_cell(values.get('accuracy'))}"
                        f"<td>{cell(values.get('n'))}</td></tr>")
        head = f"<h3>by {esc(column)}</h3>"
        if worst_name is not None:
            head += (f"<p class='worstline'>Worst group: <b>{esc(worst_name)}</b>, accuracy "
                     f"{cell(worst.get('accuracy'))}</p>")
        parts.append(f'<div class="group">{head}<div class="scroll">'
                     f'{table([column, "accuracy", "examples"], rows)}</div></div>')
    body = ("<p>Accuracy is an average; the group the model serves worst is what a user of that "
            "group sees.</p>" + '<div class="groups">' + "".join(parts) + "</div>")
    return section("groups", f"Per group ({_split_label(name)})", body)


def _curves(history) -> str:
    if not history:
        return ""
    png = curves_png(list(history))
    if png is None:
        return ""
    body = ("<p>Dashed lines mark where one training phase ends and the next begins (names above). "
            "Validation loss rising while training loss falls is overfitting.</p>"
            + img(png, "training curves", "plot"))
    return section("curves", "Training curves", body)


def _figures(run_dir: Path, view: ReportView) -> str:
    """The task's own plots (``view.figures``) that the run folder holds."""
    shown = [(title, run_dir / name) for title, name in view.figures if (run_dir / name).is_file()]
    if not shown:
        return ""
    return section("figures", "Plots", "".join(img(path.read_bytes(), title, "plot") for title, path in shown))


def _confusion(metrics: dict, classes, view: ReportView) -> str:
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
    title = f"{view.confusion_kind} matrix ({_split_label(name)})"
    png = confusion_png(cm, [str(c) for c in names], title, shares=view.confusion_cells == "shares")
    return section("confusion", title, view.confusion_text + img(png, title, "plot cm"))


def _summary(summary: dict | None, data: dict | None) -> str:
    if not summary and not data:
        return ""
    summary = summary or {}
    parts = []
    if isinstance(data, dict) and data:
        parts.append("<p>" + " · ".join(f"{esc(k)} <b>{cell(v)}</b>" for k, v in data.items()) + "</p>")
    splits = summary.get("splits") or {}
    if splits:
        names = list(splits)
        classes: list[str] = []
        for entry in splits.values():
            classes += [c for c in (entry or {}).get("per_class") or {} if c not in classes]
        rows = []
        for c in classes:
            cells = "".join(f"<td>{cell(((splits[s] or {}).get('per_class') or {}).get(c))}</td>" for s in names)
            rows.append(f"<tr><th>{esc(c)}</th>{cells}</tr>")
        total = "".join(f"<td><b>{cell((splits[s] or {}).get('n'))}</b></td>" for s in names)
        rows.append(f'<tr class="total"><th>all</th>{total}</tr>')
        parts.append("<h3>Examples per split</h3>"
                     f'<div class="scroll">{table(["class"] + names, rows)}</div>')
    inputs = summary.get("inputs") or {}
    if inputs:
        rows = [f"<tr><th>{esc(k)}</th><td>{cell(v)}</td></tr>" for k, v in flatten(inputs)]
        parts.append("<h3>Inputs</h3><p>What was measured on the training inputs, against what the "
                     "model is fed.</p>" + table(["measure", "value"], rows, "kv"))
    if not parts:
        return ""
    return section("data", "Data", "".join(parts))


def _warnings(summary: dict | None) -> str:
    warnings = [w for w in (summary or {}).get("warnings") or [] if w]
    if not warnings:
        return ""
    items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return (f'<div class="warnings" role="alert"><b>Data warnings ({len(warnings)})</b>'
            f"<ul>{items}</ul></div>")


# ---------------------------------------------------------------------------------------------
# examples


def _example_card(ex: dict) -> str:
    kind = str(ex.get("kind") or "image")
    media = ""
    wide = False
    if ex.get("image") is not None and kind in ("image", "overlay"):
        png = image_png(ex["image"], thumbnail=kind != "overlay")
        if png is not None:
            cls = "overlay" if kind == "overlay" else "thumb"
            media = img(png, str(ex.get("name", "")), cls)
            wide = kind == "overlay"
        heat = image_png(ex["heatmap"], thumbnail=True) if ex.get("heatmap") is not None else None
        media += img(heat, f"Grad-CAM of {ex.get('name', '')}", "thumb") if heat is not None else ""
    if ex.get("attributions"):  # words highlighted by how they moved the prediction
        media += f'<div class="text">{highlighted(ex["attributions"], TEXT_CHARS)}</div>'
    elif ex.get("text") is not None:
        text = str(ex["text"])
        if len(text) > TEXT_CHARS:
            text = text[:TEXT_CHARS].rstrip() + " …"
        media += f'<div class="text">{esc(text)}</div>'
    if ex.get("audio") is not None:
        wav = wav_bytes(ex["audio"], ex.get("sample_rate"))
        if wav is not None:
            uri = "data:audio/wav;base64," + base64.b64encode(wav).decode("ascii")
            media += f'<audio controls preload="none" src="{uri}"></audio>'
    prob = ex.get("probability")
    prob_text = f"{100 * float(prob):.1f}%" if isinstance(prob, (int, float)) else "—"
    caption = f'<div class="name" title="{esc(ex.get("name", ""))}">{esc(ex.get("name", ""))}</div>'
    if ex.get("true") not in (None, ""):
        caption += f'<div>true <b>{esc(ex["true"])}</b></div>'
    if ex.get("predicted") not in (None, ""):
        shown = f" ({esc(prob_text)})" if prob is not None else ""
        caption += f'<div>predicted <b class="{"good" if ex.get("correct") else "bad"}">{esc(ex["predicted"])}</b>{shown}</div>'
    if ex.get("loss") is not None:
        caption += f'<div class="muted">loss {cell(ex.get("loss"))}</div>'
    klass = "card wide" if wide else "card"
    return f'<div class="{klass}">{media}{caption}</div>'


def _examples(examples) -> str:
    if not examples:
        return ""
    correct = [e for e in examples if isinstance(e, dict) and e.get("correct")]
    examples = [e for e in examples if not (isinstance(e, dict) and e.get("correct"))]
    shown = [e for e in list(examples)[:MAX_EXAMPLES] if isinstance(e, dict)]
    if not shown:
        return ""
    cards = "".join(_example_card(e) for e in shown)
    more = f" (the first {len(shown)} of {len(examples)})" if len(examples) > len(shown) else ""
    body = (f"<p>The test examples with the highest loss{esc(more)}: confident mistakes first. Look "
            "for wrong labels, ambiguous inputs and a pattern in what is confused.</p>"
            f'<div class="grid">{cards}</div>' + note(shown))
    return section("examples", "Most wrong examples", body + saliency_section(correct, _example_card))


# ---------------------------------------------------------------------------------------------
# footer


def _footer(metrics: dict) -> str:
    timing = metrics.get("timing") or {}
    phases = [p for p in metrics.get("phases") or [] if isinstance(p, dict)]
    if not timing and not phases:
        return ""
    parts = []
    if timing:
        bits = []
        if "train_seconds" in timing:
            bits.append(f"training <b>{cell(timing['train_seconds'])} s</b>")
        if "total_seconds" in timing:
            bits.append(f"total {cell(timing['total_seconds'])} s")
        per = timing.get("phase_seconds") or []
        if per:
            names = [p.get("name", f"phase {i}") for i, p in enumerate(phases)]
            names += [f"phase {i}" for i in range(len(names), len(per))]
            bits.append("per phase: " + ", ".join(f"{esc(n)} {cell(s)} s" for n, s in zip(names, per)))
        parts.append("<p>Time: " + " · ".join(bits) + "</p>")
    strategy = metrics.get("strategy")
    if isinstance(strategy, dict) and strategy:
        parts.append(strategy_section(strategy))
    if isinstance(metrics.get("tune"), dict):
        parts.append(tune_section(metrics["tune"]))
    adaptation = metrics.get("adaptation")
    if isinstance(adaptation, dict) and adaptation:
        parts.append(adaptation_section(adaptation))
    if isinstance(metrics.get("calibration"), dict):
        parts.append(calibration_section(metrics["calibration"]))
    if phases:
        rows = []
        for p in phases:
            epochs = cell(p.get("epochs_run"))
            if p.get("epochs_planned") is not None:
                epochs += f" / {cell(p.get('epochs_planned'))}"
            groups = p.get("unfrozen_groups")
            groups_text = num(groups) if groups else "none (head only)"
            cut = p.get("cut_cache") or {}  # a phase trained on the cached frozen part below its groups
            views = f", {cut['views']} views" if cut.get("views", 1) > 1 else ""  # the flips of each image
            cache = f"cut after {', '.join(cut.get('cut_after', []))}{views}" if cut.get("used") \
                else p.get("feature_cache")
            rows.append(f"<tr><th>{esc(p.get('name', ''))}</th><td>{epochs}</td>"
                        f"<td>{cell(p.get('learning_rate'))}</td><td>{esc(groups_text)}</td>"
                        f"<td>{cell(p.get('batchnorm'))}</td><td>{cell(cache)}</td>"
                        f"<td>{cell(p.get('seconds'))}</td></tr>")
        parts.append("<h3>Training phases</h3>" + table(
            ["phase", "epochs run / planned", "learning rate", "unfrozen groups", "batchnorm",
             "feature cache", "seconds"], rows))
    return '<footer id="phases">' + "".join(parts) + "</footer>"


# ---------------------------------------------------------------------------------------------
# page


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
.bad{color:#b42318}.good{color:#067647}
footer{font-size:13.5px;color:#3b4456;margin-bottom:24px}
"""


def write_report(run_dir, *, title: str, headline: str, task: str, metrics: dict, history: list[dict],
                 summary: dict | None = None, examples: list[dict] | None = None,
                 classes: list[str] | None = None, view: ReportView | None = None, card: dict | None = None) -> Path:
    """Write ``run_dir/report.html`` (one self-contained page) and return its path.

    ``metrics`` is the run's ``metrics.json`` content (``val``, ``test``, ``timing``, ``phases``,
    ``data``); ``history`` the per-epoch rows; ``summary`` the data summary; ``examples`` the test
    examples with the highest loss (``name``, ``true``, ``predicted``, ``probability``, ``loss``,
    ``kind`` and the ``image``, ``text`` or ``audio`` itself); ``classes`` the class names in
    label order (the confusion matrix's axes); ``view`` the task's :class:`ReportView` (default:
    classification's); ``task`` names the task in the page's header; ``card`` the run's model card
    (:func:`tlmulti.reports.model_card.build_card`), after the examples."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics if isinstance(metrics, dict) else {}
    view = view or ReportView()

    def guarded(name: str, build) -> str:
        try:
            return build()
        except Exception as exc:  # noqa: BLE001 - one malformed part must not cost the whole report
            return f'<p class="muted">The {esc(name)} part could not be shown: {esc(type(exc).__name__)}: {esc(exc)}</p>'

    sections = [
        ("metrics", "metrics", guarded("headline metrics", lambda: _headline_metrics(metrics, view))),
        ("classes", "per class", guarded("per-class", lambda: _per_class(metrics, view))),
        ("groups", "groups", guarded("per-group", lambda: _group_tables(metrics))),
        ("curves", "curves", guarded("training curves", lambda: _curves(history))),
        ("confusion", "confusion", guarded("confusion matrix",
                                           lambda: _confusion(metrics, classes, view))),
        ("figures", "plots", guarded("plots", lambda: _figures(run_dir, view))),
        ("data", "data", guarded("data summary", lambda: _summary(summary, metrics.get("data")))),
        ("examples", "most wrong", guarded("examples", lambda: _examples(examples))),
        ("card", "model card", guarded("model card", lambda: section("card", "Model card", to_html(card)) if card else "")),
    ]
    footer = guarded("phases", lambda: _footer(metrics))
    links = [(a, label) for a, label, body in sections if body] + ([("phases", "phases")] if footer else [])
    nav = "<nav>" + "".join(f'<a href="#{a}">{esc(label)}</a>' for a, label in links) + "</nav>"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header><p class="title">{esc(title)}<span class="task">{esc(task)}</span></p>'
        f'<h1 class="headline">{esc(headline)}</h1></header>{nav}'
        + guarded("warnings", lambda: _warnings(summary))
        + "".join(body for _, _, body in sections)
        + footer
        + "</main></body></html>\n"
    )
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
