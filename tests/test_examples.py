"""The scripts in examples/ run end to end in their quick mode and measure what they say.

Each example runs as a subprocess with this interpreter, its output folder in ``tmp_path`` and
``TLMULTI_HOME`` the test's own empty store (set by the autouse fixture in conftest), so data
and weights are built from the locally installed packages the way a new user's first run
builds them. The runs that train take more than 30 s on 2 CPU cores and are marked slow.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlmulti import paths

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Collected before the autouse fixture points TLMULTI_HOME at a fresh folder for each test.
_USER_DOWNLOADS = paths.home() / "downloads"


def run_example(name: str, *args: str, timeout: int = 1200) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ), check=False)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def finished_run(run_dir: Path) -> dict:
    assert (run_dir / "model.keras").is_file()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    return json.loads((run_dir / "metrics.json").read_text())


def probability(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0


def printed(pattern: str, text: str) -> tuple[float, ...]:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in:\n{text[-3000:]}"
    return tuple(float(g) for g in match.groups())


@pytest.fixture
def stardist_wheel(monkeypatch):
    from tlmulti.datasets.nuclei import VERSION

    wheels = sorted(_USER_DOWNLOADS.glob(f"stardist-{VERSION}-*.whl"))
    if not wheels:
        pytest.skip(f"stardist wheel not in {_USER_DOWNLOADS}; run 'tlmulti datasets prepare nuclei' once")
    monkeypatch.setenv("TLMULTI_STARDIST_WHEEL", str(wheels[0]))
    return wheels[0]


# -- custom task ------------------------------------------------------------------------------------

@pytest.fixture
def custom_task_module():
    """examples/custom_task.py imported as a module, its task unregistered afterwards."""
    from tlmulti import registry

    name = "custom_task_example"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "custom_task.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    registry.unregister_task(module.TASK)
    sys.modules.pop(name, None)


def test_custom_task_registers_its_recipe_keys_and_reads_npz_archives(custom_task_module, tmp_path):
    import tlmulti
    from tlmulti.recipe import from_dict
    from tlmulti.tasks import make_task

    ex = custom_task_module
    ex.make_archive(tmp_path / "train.npz", 5, seed=0)
    ex.make_archive(tmp_path / "new.npz", 2, seed=1, labelled=False)
    ex.register()
    ex.register()  # a second call keeps the first registration
    assert tlmulti.get_task(ex.TASK).data_config is ex.NpzDataConfig

    recipe = from_dict({"task": ex.TASK, "data": {"train": str(tmp_path / "train.npz"),
                                                                 "images_key": "images", "image_size": [32, 32]}})
    assert isinstance(recipe.data, ex.NpzDataConfig) and recipe.backbone.name == "efficientnet_lite0.imagenet"
    with pytest.raises(tlmulti.RecipeError, match="data.images_key"):
        from_dict({"task": ex.TASK, "data": {"image_key": "images"}})

    task = make_task(recipe)
    examples = task.read(str(tmp_path / "train.npz"))
    assert examples.classes == list(ex.CLASSES) and len(examples) == 15
    assert examples.x.shape == (15, 32, 32, 3) and examples.x.dtype == np.uint8
    assert sorted(set(examples.meta["site"])) == ["site_a", "site_b"]
    assert np.bincount(examples.y).tolist() == [5, 5, 5]
    x, names = task.read_inputs([str(tmp_path / "new.npz")])
    assert x.shape == (6, 32, 32, 3) and names[0] == "new.npz#0"
    with pytest.raises(tlmulti.DataError, match="labels"):
        task.read(str(tmp_path / "new.npz"))
    recipe.data.images_key = "pixels"
    with pytest.raises(tlmulti.DataError, match="data.images_key"):
        make_task(recipe).read(str(tmp_path / "train.npz"))


@pytest.mark.slow
def test_custom_task_example_trains_evaluates_and_predicts(tmp_path):
    out = tmp_path / "custom"
    stdout = run_example("custom_task.py", "--quick", "--out", str(out))
    metrics = finished_run(out / "run")
    info = json.loads((out / "run" / "run.json").read_text())
    assert info["task"] == "npz_image_classification" and info["classes"] == ["checker", "dots", "stripes"]
    test = metrics["test"]
    assert probability(test["accuracy"]) and probability(test["auroc"]) and probability(test["macro_f1"])
    assert test["accuracy"] > 0.5 and test["auroc"] > 0.7  # chance: 0.33 and 0.5
    assert [p["name"] for p in metrics["phases"]] == ["head", "finetune"]
    assert set(test["by_group"]) == {"site_a", "site_b"}  # data.group_column of the recipe

    (accuracy,) = printed(r"test accuracy (\d\.\d+)", stdout)
    assert accuracy == pytest.approx(test["accuracy"], abs=5e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] == test["accuracy"]
    assert set(summary["by_site"]) == {"site_a", "site_b"} and all(map(probability, summary["by_site"].values()))
    assert len(summary["predictions"]) == 6  # the unlabelled archive: 2 images of each class
    for p in summary["predictions"]:
        probs = [t["probability"] for t in p["top"]]
        assert p["input"].startswith("unlabelled.npz#") and len(probs) == 2
        assert all(map(probability, probs)) and probs[0] >= probs[1]
        assert {t["label"] for t in p["top"]} <= {"checker", "dots", "stripes"}


# -- medical imaging ------------------------------------------------------------------------------

@pytest.mark.slow
def test_medical_adaptation_example_splits_by_patient_and_compares_scanners(stardist_wheel, tmp_path):
    out = tmp_path / "medical"
    stdout = run_example("medical_adaptation.py", "--quick", "--out", str(out))
    run_dir = out / "run"
    metrics = finished_run(run_dir)
    assert (run_dir / "source_only.keras").is_file()

    # patient-level split: no region has patches in both training and validation
    with open(run_dir / "splits.csv", newline="") as f:
        splits = list(csv.DictReader(f))

    def regions(split):  # patch files are named <region>_y<row>_x<col>.tif
        return {Path(r["path"]).name.split("_")[0] for r in splits if r["split"] == split}

    val_regions, train_regions = regions("val"), regions("train")
    assert val_regions and train_regions and not (val_regions & train_regions)

    test = metrics["test"]
    assert test["positive_class"] == "nucleus"
    for key in ("auroc", "auprc", "sensitivity", "specificity", "threshold", "ece"):
        assert probability(test[key]), key
    assert test["threshold_from"].startswith("validation")

    adaptation = metrics["adaptation"]
    assert adaptation["method"] == adaptation["chosen"] == "adabn"
    assert set(adaptation["candidates"]) == {"none", "adabn"}
    assert adaptation["candidates"]["adabn"]["guard"] in ("ok", "tripped")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["split_by"] == "region"
    assert set(summary["models"]) == {"source-only", "adapted (adabn)"}
    for model, sets in summary["models"].items():
        assert set(sets) == {"val", "scanner_a", "scanner_b"}
        for name, m in sets.items():
            for key in ("auroc", "auprc", "sensitivity", "specificity", "threshold", "accuracy", "ece"):
                assert probability(m[key]), (model, name, key)
            lo, hi = m["auroc_ci"]
            assert lo <= m["auroc"] <= hi, (model, name)
        assert sets["scanner_a"]["n"] == sets["scanner_b"]["n"] == 196  # the four test regions
    # the pretrained encoder separates nuclei from background on the training scanner
    assert summary["models"]["source-only"]["scanner_a"]["auroc"] > 0.75
    before, after = printed(r"scanner B AUROC: source-only (\d\.\d+) -> adapted (\d\.\d+)", stdout)
    assert before == pytest.approx(summary["models"]["source-only"]["scanner_b"]["auroc"], abs=5e-4)
    assert after == pytest.approx(summary["models"]["adapted (adabn)"]["scanner_b"]["auroc"], abs=5e-4)
    # the adapted model is the run's model: its metrics on scanner A match metrics.json's test section
    assert summary["models"]["adapted (adabn)"]["scanner_a"]["auroc"] == pytest.approx(test["auroc"], abs=1e-3)
    assert len(list((out / "scanner_b" / "unlabelled").glob("*.tif"))) == 588


# -- speech ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_speech_adaptation_example_reports_unseen_voices_before_and_after(tmp_path):
    out = tmp_path / "speech"
    stdout = run_example("speech_adaptation.py", "--quick", "--out", str(out))
    run_dir = out / "run"
    metrics = finished_run(run_dir)
    assert (run_dir / "source_only.keras").is_file()
    adaptation = metrics["adaptation"]
    assert adaptation["chosen"] == "adabn" and adaptation["target_examples"] == 200
    assert adaptation["candidates"]["adabn"]["guard"] in ("ok", "tripped")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_clips"] == metrics["data"]["train"] == 200 * 8 // 10  # 20 per class, 20% to validation
    accents = {"en-029", "flite-awb", "flite-kal", "flite-kal16", "flite-rms", "flite-slt"}
    for label in ("source_only", "adapted"):
        result = summary[label]
        assert result["n"] == 280  # 200 flite test clips and the 80 of the held-out accent
        assert set(result["by_accent"]) == accents
        assert all(map(probability, result["by_accent"].values())) and probability(result["accuracy"])
        assert result["worst_accent"]["accuracy"] == min(result["by_accent"].values())
        assert len(result["by_speaker"]) == 5 + 8  # five flite voices, eight en-029 voices
        assert result["worst_speaker"]["accuracy"] == min(result["by_speaker"].values())
        assert result["accuracy"] > 0.15  # chance: 0.1
    # the adapted model is the run's model: its accuracy matches metrics.json's test section
    assert summary["adapted"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1.5 / 280)
    before, after = printed(r"\nall\s+(\d\.\d+)\s+(\d\.\d+)", stdout)
    assert before == pytest.approx(summary["source_only"]["accuracy"], abs=5e-4)
    assert after == pytest.approx(summary["adapted"]["accuracy"], abs=5e-4)
