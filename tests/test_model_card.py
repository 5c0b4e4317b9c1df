"""MODEL_CARD.md: every run folder gets one (a resumed run too, and every registered task), it
names every section with the run's own numbers, and its limitations come from those numbers."""

from __future__ import annotations

import json
import re

import pytest

from tests.builders import image_recipe, registered_tasks, write_image_folder
from tlmulti.reports.markup import num
from tlmulti.reports.model_card import (
    FILE, GROUP_GAP, IMBALANCE, SMALL_CLASS, build_card, limitations, to_html, to_markdown,
)

SECTIONS = ("Model", "Intended use and data", "Results", "Per-group results", "Calibration", "Baseline",
            "Strategy and tuning", "Training recipe", "Limitations")


def _headings(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.M)


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


# ---------------------------------------------------------------------------------------------
# a real run


@pytest.fixture
def image_run(tiny_backbone, tmp_path):
    import tlmulti

    images = write_image_folder(tmp_path / "images", classes=("cat", "dog"), per_class=8)
    recipe = image_recipe(tiny_backbone, images, output={"plots": True}, evaluation={"bootstrap": 200},
                          phases=[{"name": "head", "epochs": 1, "learning_rate": 0.01},
                                  {"name": "top", "epochs": 1, "learning_rate": 0.001, "unfreeze": "top:1"}])
    recipe.data.test = str(images)
    return tlmulti.train(recipe, out=tmp_path / "run")


def test_a_run_writes_a_model_card_with_its_own_numbers(image_run):
    run = image_run
    text = (run.dir / FILE).read_text(encoding="utf-8")
    metrics = json.loads((run.dir / "metrics.json").read_text())
    summary = json.loads((run.dir / "data_summary.json").read_text())
    assert _headings(text) == list(SECTIONS)

    model = _section(text, "Model")
    assert "image_classification" in model and "tiny_cnn.test" in model and "2: cat, dog" in model
    assert "| Weights licence | not recorded |" in model  # the test backbone records none
    assert "image_size 16x16" in model

    data = _section(text, "Intended use and data")
    for c in ("cat", "dog"):
        counts = [num(summary["splits"][s]["per_class"][c]) for s in ("train", "val", "test")]
        assert f"| {c} | {' | '.join(counts)} |" in data
    assert f"| all | {' | '.join(num(summary['splits'][s]['n']) for s in ('train', 'val', 'test'))} |" in data

    results = _section(text, "Results")
    test = metrics["test"]
    lo, hi = test["ci"]["accuracy"]
    row = next(line for line in results.splitlines() if line.startswith("| accuracy (primary) |"))
    assert row.split(" | ")[-1].rstrip(" |") == f"{num(test['accuracy'])} (95% CI {num(lo)} to {num(hi)})"
    vlo, vhi = metrics["val"]["ci"]["accuracy"]
    assert row.split(" | ")[1] == f"{num(metrics['val']['accuracy'])} (95% CI {num(vlo)} to {num(vhi)})"
    assert f"| loss | {num(metrics['val']['loss'])} | {num(test['loss'])} |" in results
    assert "200 resamples" in results

    assert "no group column" in _section(text, "Per-group results")
    assert f"Expected calibration error as trained: {num(test['ece'])}" in _section(text, "Calibration")
    base = metrics["baseline"]
    baseline = _section(text, "Baseline")
    assert base["method"] in baseline
    assert f"| test | {num(test['accuracy'])} | {num(base['test']['accuracy'])} |" in baseline
    beaten = base["val"]["accuracy"] > metrics["val"]["accuracy"]
    assert f"{'the baseline beats the model' if beaten else 'the model beats the baseline'} on validation" in baseline
    assert ("The classic baseline" in _section(text, "Limitations")) is (beaten or base["test"]["accuracy"]
                                                                          > test["accuracy"])
    assert "strategy: fixed" in _section(text, "Strategy and tuning")

    recipe_part = _section(text, "Training recipe")
    for p in metrics["phases"]:
        groups = ", ".join(p["unfrozen_groups"]) or "none (head only)"
        assert (f"| {p['name']} | {groups} | {num(p['learning_rate'])} | {num(p['epochs_run'])} / "
                f"{num(p['epochs_planned'])} | {p['batchnorm']} | {num(p['seconds'])} |") in recipe_part
    assert f"training took {num(metrics['timing']['train_seconds'])} s" in recipe_part

    limits = _section(text, "Limitations")
    train = summary["splits"]["train"]["per_class"]
    assert f"fewer than {SMALL_CLASS} training examples" in limits
    for c, n in train.items():
        assert f"{c} ({n})" in limits
    assert (f"Small test set: {num(test['n'])} examples" in limits
            or f"spans {num(lo)} to {num(hi)} (width {num(hi - lo)}) on {num(test['n'])} examples" in limits)

    page = (run.dir / "report.html").read_text(encoding="utf-8")
    card = page.split('<section id="card">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Model card</h2>" in card and all(f"<h3>{s}</h3>" in card for s in SECTIONS)
    assert f"{num(test['accuracy'])} (95% CI {num(lo)} to {num(hi)})" in card
    assert 'href="#card"' in page


def test_a_resumed_run_writes_the_card_of_its_final_metrics(tiny_backbone, tmp_path, monkeypatch):
    import tlmulti
    from tlmulti.training import checkpoints
    from tlmulti.training.trainer import resume

    images = write_image_folder(tmp_path / "images", per_class=6)
    recipe = image_recipe(tiny_backbone, images, phases=[{"name": "head", "epochs": 2, "learning_rate": 0.01}],
                          evaluation={"bootstrap": 0})
    real, calls = checkpoints.save, []

    def crashing(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # after the first epoch
            raise RuntimeError("stopped")

    monkeypatch.setattr(checkpoints, "save", crashing)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        tlmulti.train(recipe, out=out)
    assert not (out / FILE).exists()
    monkeypatch.setattr(checkpoints, "save", real)
    resume(out)
    metrics = json.loads((out / "metrics.json").read_text())
    text = (out / FILE).read_text(encoding="utf-8")
    assert _headings(text) == list(SECTIONS)
    assert f"| accuracy (primary) | {num(metrics['val']['accuracy'])} |" in text  # no test set: validation only
    assert "No test set" in _section(text, "Limitations")
    assert "| head | none (head only) | 0.01 | 2 / 2 |" in text


@pytest.mark.parametrize("task_name", registered_tasks())
def test_every_task_gets_a_card_led_by_its_metric(task_name, task_case, tmp_path):
    import tlmulti
    from tlmulti.recipe import from_dict

    recipe = from_dict({**task_case.recipe, "seed": 0, "evaluation": {"bootstrap": 0},
                        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False},
                        "phases": [{"name": "head", "epochs": 1, "learning_rate": 0.01}]})
    run = tlmulti.train(recipe, out=tmp_path / "run")
    text = (run.dir / FILE).read_text(encoding="utf-8")
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert _headings(text) == list(SECTIONS)
    assert recipe.backbone.name in _section(text, "Model")
    assert all(str(c) in _section(text, "Model") for c in run.task.classes)
    value = metrics["test"][task_case.metric]
    assert f"| {task_case.metric} (primary) | {num(metrics['val'].get(task_case.metric))} | {num(value)} |" in text
    assert _section(text, "Limitations").strip()


# ---------------------------------------------------------------------------------------------
# limitations from constructed runs


def _summary(train: dict, test_n: int = 400) -> dict:
    return {"splits": {"train": {"n": sum(train.values()), "per_class": train},
                       "test": {"n": test_n, "per_class": {c: test_n // len(train) for c in train}}}}


def _clean_metrics(accuracy=0.9, n=400) -> dict:
    return {"val": {"accuracy": accuracy, "n": 200}, "test": {"accuracy": accuracy, "n": n, "ece": 0.03},
            "baseline": {"method": "logistic regression", "val": {"accuracy": accuracy - 0.2},
                         "test": {"accuracy": accuracy - 0.2}}}


def test_a_balanced_clean_run_has_no_limitation_and_says_so():
    metrics, summary = _clean_metrics(), _summary({"a": 200, "b": 210})
    assert limitations(metrics, summary, "accuracy") == []
    text = to_markdown(build_card(metrics, recipe={"name": "r", "task": "t"}, summary=summary, classes=["a", "b"]))
    assert "None of the checks flagged this run" in _section(text, "Limitations")


def test_a_small_class_is_flagged_with_its_count_and_the_threshold():
    found = limitations(_clean_metrics(), _summary({"a": 200, "b": 200, "rare": SMALL_CLASS - 1}), "accuracy")
    small = [line for line in found if "fewer than" in line]
    assert small and f"rare ({SMALL_CLASS - 1})" in small[0] and f"fewer than {SMALL_CLASS}" in small[0]
    assert "'a'" not in small[0] and "a (200)" not in small[0]
    assert not [line for line in limitations(_clean_metrics(), _summary({"a": 200, "b": SMALL_CLASS}), "accuracy")
                if "fewer than" in line]


def test_imbalance_is_flagged_with_the_ratio():
    big = int(IMBALANCE * 100)
    found = limitations(_clean_metrics(), _summary({"a": big, "b": 100}), "accuracy")
    assert any(f"ratio {IMBALANCE:.1f}" in line and f"'a' has {big}" in line for line in found), found
    assert not any("imbalance" in line for line in limitations(_clean_metrics(), _summary({"a": big - 1, "b": 100}),
                                                                "accuracy"))


def test_the_baseline_beating_the_model_is_flagged():
    metrics = _clean_metrics(0.7)
    metrics["baseline"]["val"]["accuracy"] = 0.75
    found = limitations(metrics, _summary({"a": 200, "b": 200}), "accuracy")
    assert [line for line in found if "baseline" in line] == [
        "The classic baseline (logistic regression) beats the model on validation accuracy: 0.75 against 0.7; "
        "the pretrained backbone is not paying off here."]


def test_low_groups_a_split_gap_a_wide_interval_and_adaptation_are_flagged():
    metrics = _clean_metrics()
    metrics["test"].update(accuracy=0.8, n=60, ci={"accuracy": [0.7, 0.9]}, group_by="site",
                           by_group={"north": {"accuracy": 0.85, "n": 30},
                                     "south": {"accuracy": 0.8 - GROUP_GAP - 0.01, "n": 30}})
    metrics["adaptation"] = {"method": "dann", "chosen": "dann", "target_examples": 50}
    found = "\n".join(limitations(metrics, _summary({"a": 200, "b": 200}), "accuracy"))
    assert "south 0.74 (n=30)" in found and "north" not in found
    assert "accuracy 0.9 on validation, 0.8 on test" in found
    assert "spans 0.7 to 0.9 (width 0.2) on 60 examples" in found
    assert "method dann" in found and "50 unlabelled target examples" in found


def test_inputs_unlike_the_network_s_are_flagged():
    summary = _summary({"a": 200, "b": 200})
    summary["inputs"] = {"images": {"sizes": {"28x28": 392, "30x30": 8}, "modes": {"L": 400},
                                    "network_input": "224x224x3 (unit)"},
                         "text_tokens": {"truncated_fraction": 0.3, "sequence_length": 128}}
    found = "\n".join(limitations(_clean_metrics(), summary, "accuracy"))
    assert "98% of training images are 28x28, enlarged 8.0x to the backbone's 224x224" in found
    assert "all 400 training images are greyscale" in found
    assert "30% of training texts are longer than the model's 128 tokens" in found
    summary["inputs"] = {"images": {"sizes": {"200x200": 400}, "modes": {"RGB": 400}, "network_input": "224x224x3 (unit)"}}
    assert limitations(_clean_metrics(), summary, "accuracy") == []


def test_the_html_section_escapes_what_the_user_named():
    card = build_card(_clean_metrics(), recipe={"name": "r", "task": "t"}, summary=_summary({"<b>": 200, "b": 200}),
                      classes=["<b>", "b"])
    html = to_html(card)
    assert "&lt;b&gt;" in html and "<b>" not in html
