"""Segmentation end to end on tiny models: train, metrics, overlays, reload, predict, CLI, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tlmulti
from tests.builders import seg_recipe, write_seg_folder
from tlmulti.cli import main


@pytest.fixture
def seg_data(tmp_path):
    return {split: write_seg_folder(tmp_path / split, n, seed=k)
            for k, (split, n) in enumerate((("train", 4), ("val", 2), ("test", 2)))}


def test_end_to_end_metrics_overlays_reload_and_nifti_prediction(tiny_backbone, seg_data, tmp_path):
    import nibabel as nib

    from tlmulti.runs import load_run

    run = tlmulti.train(seg_recipe(tiny_backbone, seg_data), out=tmp_path / "run")
    test = json.loads((run.dir / "metrics.json").read_text())["test"]
    assert set(test["per_class"]) == {"background", "nucleus"}
    assert 0 <= test["mean_iou"] <= test["mean_dice"] <= 1
    assert test["mean_dice"] == pytest.approx(test["per_class"]["nucleus"]["dice"])
    assert test["n_images"] == 2 and test["n_pixels"] == 2 * 32 * 32  # scored on stitched full images
    assert test["mean_dice"] > 0.3  # bright discs are easy: the model learnt something
    losses = [row["loss"] for row in run.history]
    assert losses[-1] < losses[0]
    overlays = sorted((run.dir / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == ["img0.png", "img1.png"]
    assert Image.open(overlays[0]).size == (3 * 32 + 8, 32)  # image | truth | prediction
    model = tlmulti.load_model(run.dir)
    raw = np.random.default_rng(0).integers(0, 255, (1, 37, 29, 3)).astype("uint8")
    probs = np.asarray(model.predict(raw, verbose=0))
    assert probs.shape == (1, 37, 29, 2)
    assert np.allclose(probs.sum(-1), 1, atol=1e-4)

    volume = np.random.default_rng(0).integers(0, 500, (20, 18, 3)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), str(tmp_path / "scan.nii.gz"))
    _, task, model = load_run(run.dir)
    results = task.predict(model, [str(tmp_path / "scan.nii.gz")], out_dir=tmp_path / "out")
    assert results[0]["slices"] == 3 and results[0]["shape"] == [20, 18]
    written = nib.load(results[0]["mask"])  # the mask volume lies on the scan in world space
    assert written.shape == (20, 18, 3) and np.allclose(written.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert (tmp_path / "out" / "scan_overlay.png").is_file()


def test_cli_train_evaluate_predict(tiny_backbone, seg_data, tmp_path):
    out = tmp_path / "cli_run"
    args = ["vision", "train", "--task", "segmentation", "--data", str(seg_data["train"]),
            "--val-data", str(seg_data["val"]), "--test-data", str(seg_data["test"]), "--backbone", tiny_backbone,
            "--epochs", "1", "--set", "data.tile=[16, 16]", "--set", "head.decoder_filters=[8]", "--set", "data.classes=[background, nucleus]",
            "--set", "callbacks.verbose=0", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "test mean Dice" in result.output
    ev = CliRunner().invoke(main, ["vision", "evaluate", str(out), "--data", str(seg_data["test"]), "--json"])
    assert ev.exit_code == 0, ev.output
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert json.loads(ev.output)["mean_dice"] == pytest.approx(saved["mean_dice"], abs=1e-6)
    text = CliRunner().invoke(main, ["vision", "evaluate", str(out), "--data", str(seg_data["test"])])
    assert "mean Dice" in text.output and "nucleus" in text.output

    big = np.random.default_rng(3).integers(0, 255, (45, 61)).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    pred_dir = tmp_path / "pred"
    res = CliRunner().invoke(main, ["vision", "predict", str(out), str(tmp_path / "big.png"),
                                    str(seg_data["test"] / "images"), "--out", str(pred_dir), "--json"])
    assert res.exit_code == 0, res.output
    results = json.loads(res.output)
    assert [r["input"].split("/")[-1] for r in results] == ["big.png", "img0.png", "img1.png"]
    mask = Image.open(pred_dir / "big_mask.png")
    assert mask.mode == "P" and mask.size == (61, 45)  # class ids at the input's full size
    assert set(np.unique(np.asarray(mask))) <= {0, 1}
    assert Image.open(pred_dir / "big_overlay.png").size == (2 * 61 + 4, 45)
    assert results[0]["fractions"]["background"] + results[0]["fractions"]["nucleus"] == pytest.approx(1)


def test_missing_mask_is_a_clear_cli_error(tiny_backbone, seg_data, tmp_path):
    (seg_data["train"] / "masks" / "img1.png").unlink()
    result = CliRunner().invoke(main, ["vision", "train", "--task", "segmentation", "--data", str(seg_data["train"]),
                                       "--backbone", tiny_backbone, "--set", "data.tile=[16, 16]",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "img1.png" in result.output and "without a mask" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_classification_only_backbone_is_refused(seg_data):
    with pytest.raises(tlmulti.TlmultiError, match="not segmentation"):
        from tlmulti.training.trainer import make_task

        make_task(tlmulti.load_recipe(task="segmentation", overrides=["backbone.name=resnet_50_imagenet.keras_hub"]))


def test_bad_recipe_values_name_the_key(tiny_backbone):
    from tlmulti.training.trainer import make_task

    for key, value, text in (("head.loss", "focal", "head.loss"), ("data.normalize", "zscore", "data.normalize"),
                             ("backbone.output_layer", "nope", "backbone.output_layer")):
        with pytest.raises(tlmulti.TlmultiError, match=text):
            recipe = tlmulti.load_recipe(task="segmentation",
                                         overrides=[f"backbone.name={tiny_backbone}", f"{key}={value}"])
            make_task(recipe).feature_layers()


def test_adaptation_auto_on_segmentation(tiny_backbone, seg_data, tmp_path):
    """Every method runs on per-pixel outputs: scores over pixels, the class prior from masks."""
    target = write_seg_folder(tmp_path / "target", 2, seed=9)
    import shutil

    shutil.rmtree(target / "masks")  # unlabelled
    run = tlmulti.train(seg_recipe(tiny_backbone, seg_data, **{
        "adaptation.method": "auto", "adaptation.target_data": str(target), "adaptation.epochs": 1}),
        out=tmp_path / "run")
    a = json.loads((run.dir / "metrics.json").read_text())["adaptation"]
    methods = {"adabn", "test_time_bn", "dann", "coral", "mmd", "entropy", "self_training"}
    assert set(a["candidates"]) == {"none", *methods} and a["guard"]["metric"] == "iou"
    assert all(np.isfinite(a["candidates"][m]["score"]) for m in a["candidates"])
    assert (run.dir / "source_only.keras").is_file() and 0 <= run.metrics["test"]["mean_dice"] <= 1


def test_image_skip_gives_the_decoder_the_full_resolution_input(seg_data, tmp_path):
    from tests.builders import build_parts, register_tiny_half
    from tlmulti import registry

    register_tiny_half("tiny_half.test")
    try:
        shapes = {}
        for skip in (False, True):
            recipe = seg_recipe("tiny_half.test", seg_data, **{"head.image_skip": str(skip).lower()})
            _, parts, _, _ = build_parts(recipe)
            shapes[skip] = [tuple(t.shape[1:]) for t in parts.head.inputs]
            assert parts.assemble().output.shape[-1] == 2
        assert shapes[False] == [(8, 8, 8), (4, 4, 8)]
        assert shapes[True] == [(16, 16, 3), (8, 8, 8), (4, 4, 8)]  # the preprocessed image, at full size
        run = tlmulti.train(seg_recipe("tiny_half.test", seg_data, **{"head.image_skip": "true"}), out=tmp_path / "r")
        assert run.metrics["test"]["mean_dice"] > 0.3
    finally:
        registry.unregister_backbone("tiny_half.test")
