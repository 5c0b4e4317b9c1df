"""``MODEL_CARD.md``: what a finished run's model is, how well it did and where not to trust it.

Every run folder gets one, also shown as a section of ``report.html``. It is rendered from plain
data the run already keeps (``metrics.json``, the resolved recipe, the data summary, the class
names and the backbone's spec), so any task's run, a resumed one included, gets the same card:

* **Model**: task, labels, backbone, where its weights came from and their licence, the input;
* **Intended use and data**: the task, the data files and the examples per class and split;
* **Results**: every scalar metric on validation and test, with its 95% bootstrap interval where
  one was computed (``evaluation.bootstrap``);
* **Per-group results** (a group column), **Calibration**, **Baseline**, **Strategy and tuning**;
* **Training recipe**: optimizer, batch size, and each phase's groups, rate, epochs and seconds;
* **Limitations**: computed from the run's numbers (:func:`limitations`), never boilerplate.

Example::

    from tlmulti.reports.model_card import build_card, to_markdown
    card = build_card(metrics, recipe=recipe.to_dict(), summary=summary, classes=classes,
                      model={"source": "keras_applications", "handle": "MobileNetV2", "license": "",
                             "primary_metric": "accuracy"})
    (run_dir / "MODEL_CARD.md").write_text(to_markdown(card))
"""

from __future__ import annotations

import math

from tlmulti.reports.markup import esc, num

FILE = "MODEL_CARD.md"
SMALL_CLASS = 20  # a training class with fewer examples than this is a limitation
IMBALANCE = 3.0  # largest / smallest training class at or above this is a limitation
GROUP_GAP = 0.05  # a group this far below the split's overall accuracy is a limitation
SPLIT_GAP = 0.05  # validation and test primary metric this far apart is a limitation
SMALL_TEST = 100  # a test set with fewer examples than this is a limitation
WIDE_INTERVAL = 0.1  # a 95% interval of the primary metric wider than this is a limitation
HIGH_ECE = 0.1  # an uncalibrated test ECE above this is a limitation
RESIZE = 2.0  # training images this many times smaller than the network input (or 2x larger) differ
SHARE_CUT = 0.05  # texts / clips cut by the model's length above this share are a limitation
INPUT_KEYS = ("image_size", "tile", "sequence_length", "sample_rate", "clip_seconds")  # recipe data keys
PRIMARY_GUESS = ("accuracy", "macro_auroc", "mean_dice", "map50", "mean_iou")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def primary_metric(metrics: dict, named: str = "") -> str:
    """The metric the card leads with: the task's own (``named``) when the run recorded it, else
    the first known headline metric present, else the first scalar of the test or validation split."""
    splits = [m for m in (metrics.get("test"), metrics.get("val")) if isinstance(m, dict) and m]
    for key in ((named,) if named else ()) + PRIMARY_GUESS:
        if any(_is_number(m.get(key)) for m in splits):
            return key
    for m in splits:
        for key, value in m.items():
            if _is_number(value) and key != "n":
                return key
    return named


def _interval(split: dict, key: str):
    ci = split.get("ci") if isinstance(split.get("ci"), dict) else {}
    got = ci.get(key)
    if isinstance(got, (list, tuple)) and len(got) == 2 and all(_is_number(v) for v in got):
        return float(got[0]), float(got[1])
    return None


def _value(metric: dict, key: str, ci: bool = True) -> str:
    text = num(metric.get(key)) if key in metric else "—"
    got = _interval(metric, key) if ci else None
    return f"{text} (95% CI {num(got[0])} to {num(got[1])})" if got else text


def _group_tables(split: dict) -> dict:
    tables = {}
    if isinstance(split.get("by_group"), dict):
        tables[str(split.get("group_by", "group"))] = split["by_group"]
    for column, entry in (split.get("groups") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("by_group"), dict):
            tables.setdefault(str(column), entry["by_group"])
    return tables


def _split(metrics: dict, name: str) -> dict:
    m = metrics.get(name)
    return m if isinstance(m, dict) else {}


# ---------------------------------------------------------------------------------------------
# limitations


def limitations(metrics: dict, summary: dict | None = None, primary: str = "") -> list[str]:
    """One line per limitation the run's own numbers show; empty when none applies."""
    summary = summary or {}
    key = primary_metric(metrics, primary)
    val, test = _split(metrics, "val"), _split(metrics, "test")
    out = []
    train = ((summary.get("splits") or {}).get("train") or {}).get("per_class") or {}
    small = {c: n for c, n in train.items() if _is_number(n) and n < SMALL_CLASS}
    if small:
        shown = ", ".join(f"{c} ({n})" for c, n in sorted(small.items(), key=lambda kv: kv[1]))
        out.append(f"Classes with fewer than {SMALL_CLASS} training examples: {shown}; their results rest on "
                   "few examples and will vary from run to run.")
    present = {c: n for c, n in train.items() if _is_number(n) and n > 0}
    if len(present) > 1:
        big, little = max(present, key=present.get), min(present, key=present.get)
        ratio = present[big] / present[little]
        if ratio >= IMBALANCE:
            out.append(f"Class imbalance: '{big}' has {present[big]} training examples and '{little}' "
                       f"{present[little]} (ratio {ratio:.1f}); read per-class recall, not accuracy alone.")
    for name, m in (("validation", val), ("test", test)):
        overall = m.get("accuracy")
        for column, groups in _group_tables(m).items():
            if not _is_number(overall):
                continue
            low = [(g, v) for g, v in groups.items() if isinstance(v, dict) and _is_number(v.get("accuracy"))
                   and v["accuracy"] < overall - GROUP_GAP]
            if low:
                shown = ", ".join(f"{g} {num(v['accuracy'])} (n={v.get('n', '?')})" for g, v in low)
                out.append(f"Groups of {column} scoring more than {num(GROUP_GAP)} below the overall {name} accuracy "
                           f"{num(overall)}: {shown}.")
    base = metrics.get("baseline") if isinstance(metrics.get("baseline"), dict) else {}
    for name, label in (("val", "validation"), ("test", "test")):
        b, m = _split(base, name), _split(metrics, name)
        if _is_number(b.get(key)) and _is_number(m.get(key)) and b[key] > m[key]:
            out.append(f"The classic baseline ({base.get('method')}) beats the model on {label} {key}: "
                       f"{num(b[key])} against {num(m[key])}; the pretrained backbone is not paying off here.")
    if _is_number(val.get(key)) and _is_number(test.get(key)) and abs(val[key] - test[key]) > SPLIT_GAP:
        out.append(f"Validation and test disagree: {key} {num(val[key])} on validation, {num(test[key])} on test "
                   f"(a gap above {num(SPLIT_GAP)}); the test data may differ from the training data, or one of "
                   "the sets is small.")
    out += _test_size(metrics, key)
    adaptation = metrics.get("adaptation") if isinstance(metrics.get("adaptation"), dict) else {}
    if adaptation and adaptation.get("method", "none") != "none":
        out.append(f"Domain adaptation was used (method {adaptation.get('method')}, kept "
                   f"{adaptation.get('chosen')}, {adaptation.get('target_examples', '?')} unlabelled target "
                   "examples): the inputs it is meant for are unlike the labelled training data, and labelled "
                   "results on them exist only where the test set was drawn from the target.")
    ece = test.get("ece")
    if not isinstance(metrics.get("calibration"), dict) and _is_number(ece) and ece > HIGH_ECE:
        out.append(f"Uncalibrated probabilities: test expected calibration error {num(ece)} (above "
                   f"{num(HIGH_ECE)}); do not read the scores as probabilities (calibration: temperature).")
    out += _inputs(summary.get("inputs") or {})
    for warning in summary.get("warnings") or []:  # those the lines above do not already say
        if warning and not str(warning).startswith(("Strong class imbalance", "Classes with fewer than")):
            out.append(f"Data check: {warning}")
    return out


def _test_size(metrics: dict, key: str) -> list[str]:
    test = _split(metrics, "test")
    if not test:
        return ["No test set: every number here is on the validation split, which also chose the "
                "early-stopping epoch, so it is optimistic."]
    n = test.get("n") if _is_number(test.get("n")) else (metrics.get("data") or {}).get("test")
    got = _interval(test, key)
    if got and got[1] - got[0] > WIDE_INTERVAL:
        return [f"Wide interval: the 95% interval of test {key} spans {num(got[0])} to {num(got[1])} "
                f"(width {num(got[1] - got[0])}) on {num(n)} examples; more test data would narrow it."]
    if _is_number(n) and n < SMALL_TEST:
        why = "" if got else " and no bootstrap interval was computed (evaluation.bootstrap: 0)"
        moves = f"; one example moves test accuracy by {num(1 / max(n, 1))}" if key == "accuracy" else ""
        return [f"Small test set: {num(n)} examples (under {SMALL_TEST}){why}{moves}."]
    return []


def _inputs(inputs: dict) -> list[str]:
    """Inputs unlike what the model is fed: images resized by a large factor or grey, texts and
    clips cut to the model's length."""
    out = []
    images = inputs.get("images") if isinstance(inputs.get("images"), dict) else {}
    sizes, network = images.get("sizes") or {}, str(images.get("network_input") or "")
    try:
        w, h = (int(v) for v in next(iter(sizes)).split("x"))
        nw, nh = (int(v) for v in network.split(" ")[0].split("x")[:2])
        factor = max(nw / w, nh / h)
        if factor >= RESIZE or factor <= 1 / RESIZE:
            share = sizes[next(iter(sizes))] / max(1, sum(sizes.values()))
            how = f"enlarged {factor:.1f}x" if factor > 1 else f"shrunk {1 / factor:.1f}x"
            out.append(f"Inputs unlike the network's: {share:.0%} of training images are {w}x{h}, {how} to the "
                       f"backbone's {nw}x{nh} input; the pretrained features were learned on images of another scale.")
    except (StopIteration, ValueError, ZeroDivisionError):
        pass
    modes = images.get("modes") or {}
    grey = sum(n for m, n in modes.items() if m in ("L", "I", "I;16", "F", "1"))
    if grey and grey == sum(modes.values()) and network.split(" ")[0].endswith("x3"):
        out.append(f"Inputs unlike the pretraining data: all {grey} training images are greyscale, fed to a "
                   "backbone pretrained on colour images.")
    text = inputs.get("text_tokens") if isinstance(inputs.get("text_tokens"), dict) else {}
    if _is_number(text.get("truncated_fraction")) and text["truncated_fraction"] > SHARE_CUT:
        out.append(f"{text['truncated_fraction']:.0%} of training texts are longer than the model's "
                   f"{text.get('sequence_length')} tokens and are cut; what follows the cut is never seen.")
    audio = inputs.get("audio_seconds") if isinstance(inputs.get("audio_seconds"), dict) else {}
    if _is_number(audio.get("longer_than_clip")) and audio["longer_than_clip"]:
        out.append(f"{audio['longer_than_clip']} training clips are longer than the model's "
                   f"{num(audio.get('clip_seconds'))} s window (longest {num(audio.get('max'))} s) and are cut.")
    return out


# ---------------------------------------------------------------------------------------------
# the card: sections of blocks ("p", text), ("ul", [items]), ("table", header, rows)


def _kv(rows) -> tuple:
    return ("table", ["item", "value"], [[k, v] for k, v in rows if v not in (None, "")])


def _model(recipe: dict, classes, model: dict) -> list:
    weights = model.get("weights") or []
    if (recipe.get("backbone") or {}).get("weights") == "random":
        source = "none: random initialisation (backbone.weights: random)"
    elif weights:
        source = "; ".join(f"{w.get('file')} (sha256 {str(w.get('sha256'))[:12]}…)" for w in weights)
        source = f"{model.get('source')}: {source}"
    else:
        source = f"{model.get('source')}" + (f": {model['handle']}" if model.get("handle") else "")
    spec_input = model.get("input") or {}
    shown = ", ".join(f"{k} {num(v) if not isinstance(v, list) else 'x'.join(map(str, v))}"
                      for k, v in spec_input.items() if not isinstance(v, dict))
    data = recipe.get("data") or {}
    trained = ", ".join(f"{k} {'x'.join(map(str, v)) if isinstance(v, list) else v}" for k in INPUT_KEYS
                        if (v := data.get(k)) not in (None, [], 0, ""))
    labels = ", ".join(map(str, classes or [])) or "—"
    return [_kv([("Task", recipe.get("task")), ("Labels", f"{len(classes or [])}: {labels}"),
                 ("Backbone", f"{recipe.get('backbone', {}).get('name')}"
                  + (f" ({model['description']})" if model.get("description") else "")),
                 ("Weights source", source), ("Weights licence", model.get("license") or "not recorded"),
                 ("Backbone input", shown), ("Input as trained (recipe data)", trained), ("Decision threshold", num(model.get("threshold"))
                                    if model.get("threshold") is not None else None)])]


def _data(recipe: dict, summary: dict, metrics: dict, model: dict) -> list:
    data = recipe.get("data") or {}
    blocks = [("p", f"Intended use: {model.get('task_description') or recipe.get('task')}, for inputs like the "
                    "training data below; it was not evaluated on anything else.")]
    blocks.append(_kv([(f"{s} data", data.get(s)) for s in ("train", "val", "test")]
                      + [("validation split", f"{num(data.get('val_split'))} of train" if not data.get("val") else None)]))
    splits = summary.get("splits") or {}
    names = list(splits)
    classes = []
    for entry in splits.values():
        classes += [c for c in (entry or {}).get("per_class") or {} if c not in classes]
    rows = [[c] + [num(((splits[s] or {}).get("per_class") or {}).get(c)) for s in names] for c in classes]
    rows.append(["all"] + [num((splits[s] or {}).get("n")) for s in names])
    if names:
        blocks.append(("table", ["class"] + names, rows))
    elif metrics.get("data"):
        blocks.append(("p", ", ".join(f"{k} {num(v)}" for k, v in metrics["data"].items())))
    return blocks


def _results(metrics: dict, key: str) -> list:
    splits = [(n, m) for n, m in (("validation", _split(metrics, "val")), ("test", _split(metrics, "test"))) if m]
    if not splits:
        return [("p", "No metrics were recorded.")]
    keys = [key] if key else []
    for _, m in splits:
        keys += [k for k, v in m.items() if _is_number(v) and k not in keys and k != "threshold"]
    rows = [[k + (" (primary)" if k == key else "")] + [_value(m, k) for _, m in splits] for k in keys]
    ci = next((m["ci"] for _, m in splits if isinstance(m.get("ci"), dict)), None)
    note = (f"Intervals: 95% bootstrap percentile, {ci.get('resamples')} resamples." if ci else
            "No confidence intervals were computed (evaluation.bootstrap: 0, or the task has none).")
    return [("table", ["metric"] + [n for n, _ in splits], rows), ("p", note)]


def _groups(metrics: dict) -> list:
    blocks = []
    for name, m in (("validation", _split(metrics, "val")), ("test", _split(metrics, "test"))):
        for column, groups in _group_tables(m).items():
            rows = [[str(g), num(v.get("accuracy")), num(v.get("n"))] for g, v in groups.items() if isinstance(v, dict)]
            blocks += [("p", f"{name}, by {column} (overall accuracy {num(m.get('accuracy'))}):"),
                       ("table", [column, "accuracy", "examples"], rows)]
    return blocks or [("p", "The data had no group column (data.group_column), so there are no per-group results.")]


def _calibration(metrics: dict) -> list:
    record = metrics.get("calibration")
    if not isinstance(record, dict):
        ece = _split(metrics, "test").get("ece", _split(metrics, "val").get("ece"))
        return [("p", "Not calibrated (calibration: none)." + (f" Expected calibration error as trained: {num(ece)}."
                                                                  if _is_number(ece) else ""))]
    rows = [[label] + [num(m.get(k)) for k in ("ece_before", "ece_after", "nll_before", "nll_after")]
            for label, m in (("validation (fitted)", record.get("val")), ("test", record.get("test")))
            if isinstance(m, dict)]
    return [("p", f"Temperature scaling on the validation split: T = {num(record.get('temperature'))}."),
            ("table", ["split", "ECE before", "ECE after", "NLL before", "NLL after"], rows)]


def _baseline(metrics: dict, key: str) -> list:
    base = metrics.get("baseline")
    if not isinstance(base, dict):
        return [("p", "No baseline recorded (baseline: false, or the task has no classic counterpart).")]
    rows, verdicts = [], []
    for name, label in (("val", "validation"), ("test", "test")):
        b, m = _split(base, name), _split(metrics, name)
        if _is_number(b.get(key)) and _is_number(m.get(key)):
            rows.append([label, num(m[key]), num(b[key])])
            verdict = ("the baseline beats the model" if b[key] > m[key] else
                       "the model beats the baseline" if m[key] > b[key] else "the model and the baseline tie")
            verdicts.append(f"{verdict} on {label}")
    text = f"{base.get('method')}, fitted on the training split in {num(base.get('seconds'))} s"
    return [("p", f"{text}: {'; '.join(verdicts) or 'no comparable metric'} ({key})."),
            ("table", ["split", f"model {key}", f"baseline {key}"], rows)]


def _strategy(metrics: dict, recipe: dict) -> list:
    items = []
    s = metrics.get("strategy")
    if isinstance(s, dict):
        tried = ", ".join(f"{c.get('name')} {num(c.get('val'))}" for c in s.get("candidates") or []
                          if isinstance(c, dict) and "val" in c)
        items.append(f"Strategy search on validation {s.get('metric')}: kept {s.get('chosen')} "
                     f"in {num(s.get('seconds'))} s (tried: {tried or '—'}).")
    t = metrics.get("tune")
    if isinstance(t, dict):
        best = t.get("best") if isinstance(t.get("best"), dict) else {}
        items.append(f"Tuning: {num(t.get('trials'))} trials, best validation {t.get('metric')} {num(best.get('val'))} "
                     f"with {', '.join(f'{k} {num(v)}' for k, v in (best.get('params') or {}).items()) or '—'}.")
    a = metrics.get("adaptation")
    if isinstance(a, dict):
        items.append(f"Domain adaptation: method {a.get('method')}, kept {a.get('chosen')} "
                     f"({num(a.get('target_examples'))} unlabelled target examples).")
    if not items:
        return [("p", f"Fixed recipe: no strategy search (strategy: {recipe.get('strategy', 'fixed')}), no tuning "
                      f"(tune.trials: {(recipe.get('tune') or {}).get('trials', 0)}), no domain adaptation.")]
    return [("ul", items)]


def _recipe(metrics: dict, recipe: dict) -> list:
    opt = recipe.get("optimizer") or {}
    data = recipe.get("data") or {}
    timing = metrics.get("timing") or {}
    head = (f"Seed {recipe.get('seed')}, optimizer {opt.get('name')} (weight decay {num(opt.get('weight_decay'))}), "
            f"batch size {data.get('batch_size')}, precision {recipe.get('precision')}, class weights "
            f"{data.get('class_weight') or 'none'}; training took {num(timing.get('train_seconds'))} s "
            f"({num(timing.get('total_seconds'))} s in all). The run's recipe.yaml reproduces it.")
    rows = []
    for p in metrics.get("phases") or []:
        if isinstance(p, dict):
            rows.append([str(p.get("name")), ", ".join(p.get("unfrozen_groups") or []) or "none (head only)",
                         num(p.get("learning_rate")), f"{num(p.get('epochs_run'))} / {num(p.get('epochs_planned'))}",
                         str(p.get("batchnorm")), num(p.get("seconds"))])
    blocks = [("p", head)]
    if rows:
        blocks.append(("table", ["phase", "unfrozen groups", "learning rate", "epochs run / planned", "batchnorm",
                                 "seconds"], rows))
    return blocks


def build_card(metrics: dict, *, recipe: dict, summary: dict | None = None, classes=None,
               model: dict | None = None) -> dict:
    """``{"title", "sections": [(heading, blocks)]}`` from plain data: ``metrics`` (metrics.json),
    ``recipe`` (the resolved recipe as a dict), ``summary`` (the data summary), ``classes`` and
    ``model`` (``source``, ``handle``, ``description``, ``license``, ``input``, ``weights`` (the
    run card's weights entries), ``primary_metric``, ``task_description``, ``threshold``)."""
    metrics, summary, model = metrics or {}, summary or {}, model or {}
    key = primary_metric(metrics, model.get("primary_metric", ""))
    found = limitations(metrics, summary, key)
    limits = [("ul", found)] if found else [("p", (
        f"None of the checks flagged this run: no training class under {SMALL_CLASS} examples, no class imbalance of "
        f"{num(IMBALANCE)}x or more, no group more than {num(GROUP_GAP)} below the overall accuracy, the baseline does "
        f"not beat the model, validation and test agree within {num(SPLIT_GAP)}, no domain adaptation, a test set of "
        f"{SMALL_TEST}+ examples. The card only knows this data: inputs unlike it are untested."))]
    sections = [
        ("Model", _model(recipe, classes, model)),
        ("Intended use and data", _data(recipe, summary, metrics, model)),
        ("Results", _results(metrics, key)),
        ("Per-group results", _groups(metrics)),
        ("Calibration", _calibration(metrics)),
        ("Baseline", _baseline(metrics, key)),
        ("Strategy and tuning", _strategy(metrics, recipe)),
        ("Training recipe", _recipe(metrics, recipe)),
        ("Limitations", limits),
    ]
    return {"title": f"Model card: {recipe.get('name')} ({recipe.get('task')} with "
                     f"{(recipe.get('backbone') or {}).get('name')})", "sections": sections}


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(card: dict) -> str:
    lines = [f"# {card['title']}", ""]
    for heading, blocks in card["sections"]:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "ul":
                lines += [f"- {item}" for item in block[1]] + [""]
            else:
                _, header, rows = block
                lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
    return "\n".join(lines)


def to_html(card: dict) -> str:
    """The card as a ``report.html`` section body (escaped)."""
    parts = [f"<p class='muted'>{esc(card['title'])}; also in {FILE} in the run folder.</p>"]
    for heading, blocks in card["sections"]:
        parts.append(f"<h3>{esc(heading)}</h3>")
        for block in blocks:
            if block[0] == "p":
                parts.append(f"<p>{esc(block[1])}</p>")
            elif block[0] == "ul":
                parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block[1]) + "</ul>")
            else:
                _, header, rows = block
                head = "".join(f"<th>{esc(h)}</th>" for h in header)
                body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
                parts.append(f"<table class='kv'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "".join(parts)
