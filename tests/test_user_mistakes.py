"""Mistakes a user can make, met where the user meets them (the CLI): each is one line naming
the file, key or flag and the fix (exit status 2), or a warning in the data summary."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import pytest
from click.testing import CliRunner

from tests import builders
from tlmulti.cli import main

TINY = ["--backbone", "tiny_cnn.test", "--epochs", "1", "--batch-size", "4",
        "--set", "data.image_size=[16, 16]", "--set", "callbacks.verbose=0", "--set", "head.hidden=[]"]


def _refused(result, *words):
    """Exit status 2, one line on stderr naming ``words``, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _png_declaring(path, width, height):
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` 1-bit pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 256))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def manifest_run(tmp_path_factory):
    """One tiny run on a manifest that lists a file under two labels and holds a photo whose
    EXIF says 'rotate a quarter turn' (stored 24 wide, 16 high): (run folder, train output)."""
    import numpy as np
    from PIL import Image

    from tlmulti import registry

    root = tmp_path_factory.mktemp("mistakes")
    folder = builders.write_image_folder(root / "images")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(folder / "cat" / "phone.jpg", exif=exif)
    rows = [f"{p.relative_to(folder)},{p.parent.name}" for p in sorted(folder.glob("*/*.*"))]
    rows.append("cat/cat_0.png,dog")  # the same file under a second label
    (folder / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLMULTI_HOME", str(root / "home"))
        name = builders.register_tiny_cnn("tiny_cnn.test")
        try:
            result = CliRunner().invoke(main, ["vision", "train", "--data", str(folder / "labels.csv"), *TINY,
                                               "--out", str(out)])
        finally:
            registry.unregister_backbone(name)
    assert result.exit_code == 0, result.output
    return out, result.output, folder


# 1. decompression bombs -------------------------------------------------------------------------

def test_decompression_bomb_in_training_data(tiny_backbone, image_folder, tmp_path):
    bomb = _png_declaring(image_folder / "cat" / "bomb.png", 100_000, 100_000)
    assert bomb.stat().st_size < 200
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder), *TINY,
                                       "--out", str(tmp_path / "r")])
    _refused(result, "bomb.png", "10,000,000,000 pixels", "limit", "TLMULTI_MAX_IMAGE_PIXELS")
    assert not (tmp_path / "r").exists()


def test_decompression_bomb_in_predict(manifest_run, tmp_path, monkeypatch):
    run, _, folder = manifest_run
    bomb = _png_declaring(tmp_path / "bomb.png", 100_000, 100_000)
    _refused(CliRunner().invoke(main, ["vision", "predict", str(run), str(bomb)]),
             "bomb.png", "limit", "TLMULTI_MAX_IMAGE_PIXELS")
    image = folder / "dog" / "dog_0.png"  # 20 x 20: over a limit of 100 pixels, within Pillow's own
    monkeypatch.setenv("TLMULTI_MAX_IMAGE_PIXELS", "100")
    _refused(CliRunner().invoke(main, ["vision", "predict", str(run), str(image)]),
             "dog_0.png", "20x20 = 400 pixels", "limit of 100 pixels")
    monkeypatch.setenv("TLMULTI_MAX_IMAGE_PIXELS", "400")
    assert CliRunner().invoke(main, ["vision", "predict", str(run), str(image)]).exit_code == 0


# 2. image size ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["[0, 0]", "[-16, 16]"])
def test_image_size_must_be_positive(size, image_folder):
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder),
                                       "--set", f"data.image_size={size}"])
    _refused(result, "data.image_size", f"--set data.image_size={size}", "1 or more")


# 3. learning rate -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [".nan", ".inf", "0", "-1e-3"])
def test_learning_rate_must_be_a_positive_number(value, image_folder):
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder),
                                       "--set", f"phases.0.learning_rate={value}"])
    _refused(result, "phases.0.learning_rate", f"--set phases.0.learning_rate={value}")


def test_learning_rate_nan_in_a_recipe_file(image_folder, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: image_classification\nphases:\n  - name: head\n    learning_rate: .nan\n")
    result = CliRunner().invoke(main, ["vision", "train", str(recipe), "--data", str(image_folder)])
    _refused(result, "phases.0.learning_rate", str(recipe), "finite")


# 4. --epochs 0 ----------------------------------------------------------------------------------

def test_epochs_zero_for_every_phase_is_refused(image_folder):
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder), "--epochs", "0"])
    _refused(result, "--epochs 0", "untrained", "--set phases.N.epochs=0")


def test_one_phase_with_zero_epochs_stays_allowed():
    from tlmulti.recipe import load_recipe

    recipe = load_recipe(None, ["phases=[{name: head, epochs: 2}, {name: fine, epochs: 0, unfreeze: all}]"],
                         task="image_classification")
    assert [p.epochs for p in recipe.phases] == [2, 0]


# 5. flag errors name the flag -------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, key", [("--epochs", "-1", "phases.0.epochs"),
                                             ("--batch-size", "0", "data.batch_size")])
def test_flag_errors_name_the_flag(flag, value, key, image_folder):
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(image_folder), flag, value])
    line = _refused(result, f"Key '{key}' ({flag} {value}) must be", f"got {value}")
    assert "--set" not in line and ".yaml" not in line


def test_errors_about_flag_keys_name_the_flag():
    from tlmulti.cli.common import recipe_from_cli
    from tlmulti.cli.flags import Flag
    from tlmulti.errors import RecipeError

    lr = (Flag("--lr", "phases.*.learning_rate", "Learning rate of every phase.", kind=float),)
    with pytest.raises(RecipeError, match=r"^Key 'phases.0.learning_rate' \(--lr nan\) must be a finite number"):
        recipe_from_cli(None, "image_classification", (), lr, lr=float("nan"))
    with pytest.raises(RecipeError, match=r"^Key 'phases.0.epochs' \(--set phases.\*.epochs=-2\) must be 0 or more"):
        recipe_from_cli(None, "image_classification", ["phases.*.epochs=-2"])


# 6. one file under two labels -------------------------------------------------------------------

def test_file_under_two_labels_is_warned(manifest_run):
    run, output, folder = manifest_run
    warnings = [l for l in output.splitlines() if "listed under different labels" in l]
    assert len(warnings) == 1 and warnings[0].strip().startswith("warning:")
    assert str(folder / "cat" / "cat_0.png") in warnings[0] and "(cat, dog)" in warnings[0]
    summary = json.loads((run / "data_summary.json").read_text())
    assert any("cat_0.png" in w for w in summary["warnings"])


# 7. image sizes after EXIF rotation -------------------------------------------------------------

def test_summary_sizes_are_after_exif_rotation(manifest_run):
    run, output, _ = manifest_run
    summary = json.loads((run / "data_summary.json").read_text())
    sizes = summary["inputs"]["images"]["sizes"]
    assert sizes.get("16x24") == 1 and "24x16" not in sizes, sizes


# 8. TFSMLayer -----------------------------------------------------------------------------------

def test_tfsmlayer_refusal_names_it(manifest_run, tmp_path):
    import keras
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"y": x * 2.0}

    module = Double()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": module.serve})
    inputs = keras.Input((4,))
    outputs = keras.layers.TFSMLayer(str(tmp_path / "saved"), call_endpoint="serving_default")(inputs)
    run = tmp_path / "run"
    shutil.copytree(manifest_run[0], run)
    keras.Model(inputs, outputs).save(run / "model.keras")
    image = manifest_run[2] / "cat" / "cat_1.png"
    for trust in ([], ["--trust"]):
        line = _refused(CliRunner().invoke(main, ["vision", "predict", str(run), str(image), *trust]),
                        "model.keras", "TFSMLayer", "SavedModel", "--trust")
        assert "Lambda" not in line
