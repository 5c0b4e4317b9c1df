"""Grad-CAM saliency: ``vision predict --explain DIR`` and the heatmaps of report.html.

One tiny run is trained for the module on images whose class is carried only by their
bottom-right quadrant (a red patch there: class ``red``, a blue one: ``blue``, grey noise like
the rest of the image: ``plain``), so the map of a correctly classified red or blue image must
point there. (``plain`` is what is left when neither patch is there: no place shows it.)
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests import builders
from tlmulti.cli import main

SIZE = 32  # 32 px in, the tiny CNN's last feature map is 4 x 4


def _quadrant_image(rng, colour, size=SIZE):
    img = rng.integers(60, 140, (size, size, 1)).repeat(3, axis=-1).astype(np.int32)
    img += rng.integers(-20, 20, (size, size, 3))
    if colour is not None:
        half = size // 2
        patch = rng.integers(0, 50, (half, half, 3))
        patch[..., colour] += 180
        img[half:, half:] = patch
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_quadrant_folder(root, per_class, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in (("red", 0), ("blue", 2), ("plain", None)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_quadrant_image(rng, colour)).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def quadrant_run(tmp_path_factory):
    from tlmulti import registry
    from tlmulti.training import train

    root = tmp_path_factory.mktemp("saliency")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLMULTI_HOME", str(root / "home"))
        name = builders.register_tiny_cnn("tiny_cnn.saliency")
        test = _write_quadrant_folder(root / "test", 12, seed=7)
        try:
            recipe = builders.image_recipe(
                name, _write_quadrant_folder(root / "train", 16, seed=0), seed=1, output={"plots": True},
                data={"train": str(root / "train"), "test": str(test), "val_split": 0.25, "batch_size": 8,
                      "image_size": [SIZE, SIZE]},
                phases=[{"name": "head", "epochs": 10, "learning_rate": 0.05},
                        {"name": "all", "epochs": 20, "learning_rate": 0.02, "unfreeze": "all", "batchnorm": "train"}])
            train(recipe, out=root / "run")
        finally:
            registry.unregister_backbone(name)
    return root / "run", test


def _predict(run, *args):
    result = CliRunner().invoke(main, ["vision", "predict", str(run), *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_grad_cam_peaks_in_the_quadrant_that_carries_the_label(quadrant_run, tmp_path):
    run, test = quadrant_run
    rows = json.loads(_predict(run, test / "red", test / "blue", "--json", "--explain", tmp_path / "maps").output)
    assert len(rows) == 24
    correct = [r for r in rows if r["top"][0]["label"] == r["input"].rsplit("/", 2)[-2]]
    assert len(correct) >= 18, f"the tiny model classifies only {len(correct)} of 24 red and blue test images"
    inside = 0
    for r in correct:
        heat = np.load(r["heatmap"])
        assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)  # never an empty map for a correct example
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        inside += row >= SIZE // 2 and col >= SIZE // 2
        lower_right = heat[SIZE // 2:, SIZE // 2:].mean()
        assert lower_right > heat[: SIZE // 2, : SIZE // 2].mean(), r["input"]
    assert inside >= 0.8 * len(correct), f"heatmap maximum in the labelled quadrant for {inside} of {len(correct)}"


def test_heatmap_has_the_resolution_of_non_square_png_and_dicom(quadrant_run, tmp_path):
    from PIL import Image

    from tests.test_detection_data import _dicom

    run, _ = quadrant_run
    rng = np.random.default_rng(3)
    wide = _quadrant_image(rng, 0, size=48)[:30]  # 30 x 48
    Image.fromarray(wide).save(tmp_path / "wide.png")
    _dicom(tmp_path / "scan.dcm", rng.integers(0, 4000, (40, 24)))
    (tmp_path / "other").mkdir()
    Image.fromarray(wide[:, :20]).save(tmp_path / "other" / "wide.png")  # same stem: must not overwrite
    out = tmp_path / "maps"
    rows = json.loads(_predict(run, tmp_path / "wide.png", tmp_path / "scan.dcm", tmp_path / "other" / "wide.png",
                               "--json", "--explain", out).output)
    shapes = {r["input"].rsplit("/", 2)[-2] + "/" + r["input"].rsplit("/", 1)[-1]: np.load(r["heatmap"]).shape
              for r in rows}
    assert shapes == {f"{tmp_path.name}/wide.png": (30, 48), f"{tmp_path.name}/scan.dcm": (40, 24),
                      "other/wide.png": (30, 20)}
    assert len({r["heatmap"] for r in rows}) == 3
    assert sorted(p.name for p in out.iterdir()) == ["scan.npy", "scan.png", "wide-2.npy", "wide-2.png",
                                                     "wide.npy", "wide.png"]
    for r in rows:
        heat = np.load(r["heatmap"])
        assert heat.dtype == np.float32 and 0.0 <= heat.min() and heat.max() <= 1.0
        with Image.open(r["heatmap"][:-4] + ".png") as overlay:
            assert overlay.size == heat.shape[::-1] and overlay.mode == "RGB"
    text = _predict(run, tmp_path / "wide.png", "--explain", tmp_path / "text")
    assert "Heatmaps (Grad-CAM): 1" in text.output and (tmp_path / "text" / "wide.npy").is_file()


def test_volume_slices_get_one_heatmap_each(quadrant_run, tmp_path):
    nib = pytest.importorskip("nibabel")
    from tlmulti.data.images import load_slices

    run, _ = quadrant_run
    volume = np.random.default_rng(0).integers(0, 1000, (20, 28, 3)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii.gz")
    rows = json.loads(_predict(run, tmp_path / "vol.nii.gz", "--json", "--explain", tmp_path / "maps").output)
    assert [r["input"].rsplit("#", 1)[-1] for r in rows] == ["slice0", "slice1", "slice2"]
    read = load_slices(tmp_path / "vol.nii.gz", None, 3)
    for r, image in zip(rows, read):
        assert r["heatmap"].endswith(f"vol_{r['input'].rsplit('#', 1)[-1]}.npy")
        assert np.load(r["heatmap"]).shape == image.shape[:2] and sorted(image.shape[:2]) == [20, 28]


def test_explain_is_refused_for_other_tasks(tmp_path):
    """A segmentation run (its model is not loaded: the refusal comes before any prediction)."""
    from unittest import mock

    from tlmulti import registry
    from tlmulti.errors import TlmultiError

    seg = tmp_path / "segrun"
    seg.mkdir()
    (seg / "run.json").write_text(json.dumps({"status": "finished", "classes": ["a", "b"]}))
    (seg / "recipe.yaml").write_text("task: segmentation\nbackbone:\n  name: tiny_cnn.test\n")
    (seg / "model.keras").write_text("")
    builders.write_image_folder(tmp_path / "imgs", per_class=1)
    image = next((tmp_path / "imgs" / "cat").iterdir())
    name = builders.register_tiny_cnn("tiny_cnn.test")
    try:
        with mock.patch("tlmulti.backbones.local.load_keras_file", return_value=object()):
            result = CliRunner().invoke(main, ["vision", "predict", str(seg), str(image), "--explain",
                                               str(tmp_path / "maps")])
    finally:
        registry.unregister_backbone(name)
    assert result.exit_code == 2 and not isinstance(result.exception, TlmultiError)
    assert result.output.strip().splitlines() == [
        f"Error: --explain applies to image, multi-label, text and speech classification runs; '{seg}' is "
        "segmentation: drop --explain."]
    assert not (tmp_path / "maps").exists()
    for domain in ("text", "audio"):  # explained too (tests/test_text_explain.py, tests/test_audio_explain.py)
        assert "--explain DIR" in CliRunner().invoke(main, [domain, "predict", "--help"]).output


def test_report_shows_heatmaps_of_wrong_and_correct_examples(quadrant_run):
    run, _ = quadrant_run
    page = (run / "report.html").read_text()
    assert "Where the model looks" in page
    assert page.count('class="good"') == 6  # two correctly classified examples per class
    assert page.count('alt="Grad-CAM of ') == 16 + 6  # and the 16 most wrong, each with its heatmap


def test_multilabel_run_explains_its_top_label(tiny_backbone, tmp_path):
    from tests.builders import write_findings
    from tests.test_multilabel import TINY

    train, _ = write_findings(tmp_path / "train", 40, seed=0)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--test-data", str(train), *TINY,
                                       "--set", "output.plots=true", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert 'alt="Grad-CAM of ' in (out / "report.html").read_text()
    row = json.loads(_predict(out, tmp_path / "train" / "img0.png", "--json", "--explain", tmp_path / "maps").output)[0]
    assert row["heatmap"] == str(tmp_path / "maps" / "img0.npy")
    heat = np.load(row["heatmap"])
    assert heat.shape == (20, 20) and heat.dtype == np.float32 and 0.0 <= heat.min() <= heat.max() <= 1.0


def test_grad_cam_inside_a_pooled_backbone_and_none_without_a_feature_map():
    """A backbone that pools itself is explained on its last 4-D layer; a model with no 4-D layer
    is refused by GradCam and leaves report.html's examples without heatmaps."""
    import keras

    from tlmulti.errors import RunError
    from tlmulti.evaluation.saliency import GradCam, pointing_hit
    from tlmulti.tasks.image_saliency import with_saliency

    keras.utils.set_random_seed(0)
    image = keras.Input((12, 20, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(image)
    backbone = keras.Model(image, keras.layers.GlobalAveragePooling2D()(conv), name="backbone")
    features = keras.Input((4,))
    head = keras.Model(features, keras.layers.Dense(3, activation="softmax", name="classes")(features), name="head")
    inputs = keras.Input((12, 20, 3))
    model = keras.Model(inputs, head(backbone(inputs)))
    x = np.random.default_rng(0).uniform(0, 255, (5, 12, 20, 3)).astype(np.float32)
    cam = GradCam(model)
    maps, classes, probs = cam(x)
    assert cam.layer_name == "conv" and maps.shape == (5, 12, 20) and maps.dtype == np.float32
    assert np.array_equal(classes, probs.argmax(1)) and np.allclose(probs, model.predict(x, verbose=0), atol=1e-5)
    assert ((maps >= 0) & (maps <= 1)).all() and np.isclose(maps.reshape(5, -1).max(1), 1).any()

    flat = keras.Input((6,))
    dense_only = keras.Model(flat, keras.layers.Dense(2, activation="softmax")(flat))
    with pytest.raises(RunError, match="no backbone with a 4-D feature map"):
        GradCam(dense_only)
    shown = [{"name": "a", "kind": "image", "image": np.zeros((6, 1, 1), np.uint8)}]
    examples = type("E", (), {"classes": ["p", "q"], "meta": {}, "y": np.array([0]), "__len__": lambda s: 1})()
    assert with_saliency(None, dense_only, examples, shown, np.array([[0.9, 0.1]]), [False]) == shown
    assert "heatmap" not in shown[0]

    heat = np.zeros((10, 10), np.float32)
    heat[2, 2] = 1.0
    mask = np.zeros((10, 10), bool)
    mask[5:8, 5:8] = True
    assert not pointing_hit(heat, mask) and not pointing_hit(heat, mask, tolerance=4) and pointing_hit(heat, mask, 5)
