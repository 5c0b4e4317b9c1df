"""Sections of ``report.html`` about choices made before or after the phases: the fine-tuning
strategy search (``strategy: auto``), domain adaptation and probability calibration."""

from __future__ import annotations

from tlmulti.reports.markup import cell, esc, table


def strategy_section(strategy: dict) -> str:
    """The strategy kept, and every candidate's validation metric and seconds."""
    metric = strategy.get("metric", "metric")
    head = (f"<h3>Fine-tuning strategy</h3><p>Searched on the validation split ({esc(metric)}): kept "
            f"<b>{esc(strategy.get('chosen'))}</b> in {cell(strategy.get('seconds'))} s, "
            f"within {cell(strategy.get('budget'))}x a plain run (estimated "
            f"{cell(strategy.get('plain_estimate_seconds'))} s). "
            "The saved recipe states the choice and reruns without a search.</p>")
    rows = []
    for c in strategy.get("candidates") or []:
        if not isinstance(c, dict):
            continue
        changes = ", ".join(str(x) for x in c.get("changes") or []) or "the recipe as written"
        value = f"skipped: {esc(c['skipped'])}" if "skipped" in c else cell(c.get("val"))
        paired = c.get("paired") if isinstance(c.get("paired"), dict) else None
        duel = (f"{cell(paired.get('wins'))} : {cell(paired.get('losses'))} against {esc(paired.get('against'))} "
                f"(chance {cell(paired.get('chance'))})") if paired else ""
        rows.append(f"<tr><th>{esc(c.get('name', ''))}</th><td>{esc(changes)}</td><td>{value}</td>"
                    f"<td>{duel}</td><td>{cell(c.get('seconds'))}</td></tr>")
    columns = ["candidate", "changes", f"val {metric}", "right where they disagree", "seconds"]
    return head + (table(columns, rows) if rows else "")


def adaptation_section(adaptation: dict) -> str:
    """Which adaptation method was kept, and every candidate's source-validation metric, guard
    and label-free target scores."""
    guard = adaptation.get("guard") if isinstance(adaptation.get("guard"), dict) else {}
    metric = guard.get("metric", "metric")
    head = (f"<h3>Domain adaptation</h3><p>Method <b>{esc(adaptation.get('method'))}</b>, kept "
            f"<b>{esc(adaptation.get('chosen'))}</b>; {cell(adaptation.get('target_examples'))} unlabelled target "
            f"examples; guard: source validation {esc(metric)} may fall by at most {cell(guard.get('margin'))}. "
            f"Label-free score: {esc(adaptation.get('criterion') or 'none for this task')}.</p>")
    rows = []
    for name, c in (adaptation.get("candidates") or {}).items():
        if not isinstance(c, dict):
            continue
        label = "source-only" if name == "none" else name
        if "skipped" in c:
            rows.append(f"<tr><th>{esc(label)}</th><td colspan=5>not applicable: {esc(c['skipped'])}</td></tr>")
            continue
        rows.append(f"<tr><th>{esc(label)}</th><td>{cell(c.get('source_val'))}</td>"
                    f"<td>{cell(c.get('target_entropy'))}</td><td>{cell(c.get('target_balance_kl'))}</td>"
                    f"<td>{cell(c.get('score'))}</td><td>{esc(c.get('guard', '—'))}</td></tr>")
    if not rows:
        return head
    return head + table(["method", f"source val {metric}", "target entropy", "balance KL", "score", "guard"], rows)


def calibration_section(record: dict) -> str:
    """The fitted temperature and the calibration error and log-likelihood before and after it."""
    rows = []
    for split in ("val", "test"):
        m = record.get(split)
        if isinstance(m, dict):
            label = "validation (fitted here)" if split == "val" else "test"
            rows.append(f"<tr><th>{label}</th><td>{cell(m.get('ece_before'))}</td><td>{cell(m.get('ece_after'))}</td>"
                        f"<td>{cell(m.get('nll_before'))}</td><td>{cell(m.get('nll_after'))}</td></tr>")
    head = (f"<h3>Calibration</h3><p>Temperature scaling fitted on the validation split: T = "
            f"{cell(record.get('temperature'))} (above 1 softens over-confident probabilities). The saved model "
            "and its exports include it; predicted classes are unchanged.</p>")
    return head + (table(["split", "ECE before", "ECE after", "NLL before", "NLL after"], rows) if rows else "")


def tune_section(record: dict) -> str:
    """The study's best trial and the parameter importances."""
    best = record.get("best") if isinstance(record.get("best"), dict) else {}
    params = ", ".join(f"{k} {cell(v)}" for k, v in (best.get("params") or {}).items())
    head = (f"<h3>Tuning (Optuna)</h3><p>{cell(record.get('trials'))} trials ({cell(record.get('complete'))} "
            f"complete, {cell(record.get('pruned'))} pruned) in {cell(record.get('seconds'))} s; best trial "
            f"{cell(best.get('number'))}: validation {esc(record.get('metric'))} {cell(best.get('val'))} with "
            f"{esc(params)}. Every trial is in tune.csv; the saved recipe trains the best one.</p>")
    rows = [f"<tr><th>{esc(k)}</th><td>{cell(v)}</td></tr>" for k, v in (record.get("importances") or {}).items()]
    return head + (table(["parameter", "importance (fANOVA)"], rows) if rows else "")


def saliency_section(correct: list[dict], card) -> str:
    """A few correctly classified examples per class with their Grad-CAM heatmaps (drawn by
    ``card``), after the most-wrong ones; nothing when there are none."""
    if not correct:
        return ""
    cards = "".join(card(e) for e in correct)
    return ("<h3>Where the model looks</h3><p>Beside each image, its Grad-CAM heatmap for the predicted class "
            "(the backbone's last feature map weighted by the gradient of the class score; red: what raised "
            "the score most). Above, the most wrong examples carry theirs too; below, a few correctly "
            "classified examples per class. A model that looks at borders, text or the background instead "
            f"of the object has learnt a shortcut.</p><div class=\"grid\">{cards}</div>")
