"""The CLI through CliRunner: help everywhere, a tiny train/evaluate/predict, clear errors."""

import json

import pytest
from click.testing import CliRunner

from tlmulti.cli import main


def _all_commands(group, prefix=()):
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + (name,))


def test_help_of_every_command():
    commands = list(_all_commands(main))
    assert ("vision", "train") in commands and ("weights", "import") in commands
    for path in [()] + commands:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


TINY = ["--backbone", "tiny_cnn.test", "--epochs", "1", "--batch-size", "4",
        "--set", "data.image_size=[16, 16]", "--set", "callbacks.verbose=0", "--set", "head.hidden=[]"]


@pytest.fixture
def trained_run(tiny_backbone, image_folder, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder),
                                       "--test-data", str(image_folder), *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Run folder: {out}" in result.output and "test accuracy" in result.output
    return out


def test_train_evaluate_predict(trained_run, image_folder):
    result = CliRunner().invoke(main, ["vision", "evaluate", str(trained_run), "--data", str(image_folder), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"]) and metrics["n"] == 12
    text = CliRunner().invoke(main, ["vision", "evaluate", str(trained_run), "--data", str(image_folder)])
    assert "accuracy" in text.output and "cat" in text.output
    image = next((image_folder / "cat").iterdir())
    result = CliRunner().invoke(main, ["vision", "predict", str(trained_run), str(image), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    preds = json.loads(result.output)
    assert preds[0]["input"] == str(image) and len(preds[0]["top"]) == 2
    assert {t["label"] for t in preds[0]["top"]} == {"cat", "dog"}
    folder = CliRunner().invoke(main, ["vision", "predict", str(trained_run), str(image_folder / "dog")])
    assert folder.exit_code == 0 and folder.output.count("\n") == 6


def test_run_command_reproduces_from_saved_recipe(trained_run, tmp_path):
    result = CliRunner().invoke(main, ["run", str(trained_run / "recipe.yaml"), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    a = json.loads((trained_run / "metrics.json").read_text())["test"]["accuracy"]
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())["test"]["accuracy"]
    assert a == pytest.approx(b)


def test_unreadable_image_is_a_clear_error(tiny_backbone, image_folder, tmp_path):
    (image_folder / "cat" / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder), *TINY,
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "broken.png" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_empty_class_folder_is_a_clear_error(tiny_backbone, image_folder, tmp_path):
    (image_folder / "bird").mkdir()
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder), *TINY,
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Class folder" in result.output and "bird" in result.output


def test_unknown_recipe_key_is_a_clear_error(tiny_backbone, image_folder, tmp_path):
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder), *TINY,
                                       "--set", "optimiser.name=sgd", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "Unknown key 'optimiser'" in result.output and "Did you mean 'optimizer'" in result.output


def test_existing_run_folder_is_not_overwritten(trained_run, image_folder):
    before = (trained_run / "metrics.json").read_text()
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder), *TINY, "--out", str(trained_run)])
    assert result.exit_code == 2 and "already exists" in result.output
    assert (trained_run / "metrics.json").read_text() == before


def test_csv_manifest_with_grey_and_16_bit_images(tiny_backbone, tmp_path):
    import numpy as np
    from PIL import Image

    rows = ["path,label,domain"]
    rng = np.random.default_rng(0)
    for i in range(8):
        label = "a" if i % 2 else "b"
        if i < 4:
            img = Image.fromarray((rng.integers(0, 4000, (12, 12)) + (3000 if label == "a" else 0)).astype(np.uint16))
            name = f"img{i}.tif"
        else:
            img = Image.fromarray((rng.integers(0, 50, (12, 12)) + (150 if label == "a" else 0)).astype(np.uint8), "L")
            name = f"img{i}.png"
        img.save(tmp_path / name)
        rows.append(f"{name},{label},{'scanner1' if i < 4 else 'scanner2'}")
    (tmp_path / "data.csv").write_text("\n".join(rows))
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(tmp_path / "data.csv"),
                                       "--test-data", str(tmp_path / "data.csv"), *TINY,
                                       "--set", "data.group_column=domain", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert set(metrics["by_group"]) == {"scanner1", "scanner2"} and metrics["by_group"]["scanner1"]["n"] == 4


def test_recipes_and_backbones_listing():
    result = CliRunner().invoke(main, ["recipes", "list"])
    assert result.exit_code == 0 and "fashion_mnist.yaml" in result.output
    result = CliRunner().invoke(main, ["backbones", "list", "--family", "vision"])
    assert result.exit_code == 0
    line = next(l for l in result.output.splitlines() if l.startswith("vgg16.hed_bsds500"))
    assert " yes " in line
    line = next(l for l in result.output.splitlines() if l.startswith("resnet50.imagenet"))
    assert " no " in line
