"""The segmentation fingerprint: what is measured on the training data, what it sets (tile,
normalisation, foreground sampling), where it is recorded, and that the default fits a
three-class intensity phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import tlmulti
from tests.builders import seg_recipe, write_seg_folder
from tlmulti.data.fingerprint import TARGET_SHARE, foreground_repeats, plan
from tlmulti.errors import RecipeError


def _recipe(train, **sets):
    overrides = [f"data.train={train}"] + [f"{k}={v}" for k, v in sets.items()]
    return tlmulti.load_recipe(task="segmentation", overrides=overrides).data


def _discs(root, n, size, dtype=np.uint8, background=20, value=200, radius=(3, 3), seed=0):
    """images/ + masks/ with one disc of ``radius`` (class 1) per image on ``background``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[: size[0], : size[1]]
    areas = []
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        r = radius[i % len(radius)]
        cy, cx = rng.integers(r + 1, size[0] - r - 1), rng.integers(r + 1, size[1] - r - 1)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        areas.append(int(mask.sum()))
        image = (background + (value - background) * mask.astype(np.int64) + rng.integers(0, 10, size)).astype(dtype)
        Image.fromarray(image).save(root / "images" / f"i{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"i{i}.png")
    return areas


def test_fingerprint_of_a_constructed_8bit_set(tmp_path):
    areas = _discs(tmp_path / "d", 6, (300, 260), radius=(3, 5))
    chosen = plan(_recipe(tmp_path / "d"), (224, 224), 24)
    fp = chosen["fingerprint"]
    assert fp["files"] == 6 and fp["size_median"] == [300, 260] and fp["bits8"] is True
    assert fp["kinds"] == {"png": 6}
    assert fp["objects"][1]["count"] == 6
    assert fp["objects"][1]["median_pixels"] == float(np.median(areas))
    assert fp["objects"][1]["min_pixels"] == min(areas)
    assert fp["class_pixel_share"][1] == pytest.approx(sum(areas) / (6 * 300 * 260), abs=1e-6)
    assert chosen["tile"] == [224, 224]  # 2 x 2 tiles of 224 in each of the 6 images: the 24 asked for
    assert plan(_recipe(tmp_path / "d"), (224, 224), 25)["tile"] == [192, 192]  # 3 x 2 each: 36
    assert chosen["normalize"] == "auto" and "8-bit" in chosen["reasons"]["normalize"]


def test_small_images_are_resized_not_tiled(tmp_path):
    _discs(tmp_path / "d", 3, (64, 64))
    chosen = plan(_recipe(tmp_path / "d"), (224, 224), 24)
    assert chosen["tile"] is None and "resized, not tiled" in chosen["reasons"]["tile"]


def test_hounsfield_units_get_one_window_for_the_dataset(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    (tmp_path / "ct" / "images").mkdir(parents=True)
    (tmp_path / "ct" / "masks").mkdir(parents=True)
    fg = []
    for i in range(2):
        volume = np.full((40, 40, 6), -1000, np.int16)  # air
        volume[5:35, 5:35] = 40 + rng.integers(-20, 20, (30, 30, 6))  # soft tissue
        mask = np.zeros(volume.shape, np.uint8)
        mask[15:25, 15:25] = 1
        volume[mask == 1] = 120 + rng.integers(-30, 30, int(mask.sum()))
        fg.append(volume[mask == 1])
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "ct" / "images" / f"v{i}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "ct" / "masks" / f"v{i}.nii.gz"))
    chosen = plan(_recipe(tmp_path / "ct"), (224, 224), 24)
    assert chosen["normalize"] == "window" and "Hounsfield" in chosen["reasons"]["normalize"]
    lo, hi = np.percentile(np.concatenate(fg), [0.5, 99.5])
    center, width = chosen["window"]
    assert center == pytest.approx((lo + hi) / 2, abs=4) and width == pytest.approx(hi - lo, abs=8)
    # the recipe's own choice wins
    kept = plan(_recipe(tmp_path / "ct", **{"data.normalize": "percentile"}), (224, 224), 24)
    assert kept["normalize"] == "percentile" and kept["reasons"]["normalize"] == "as the recipe sets it"


def test_sixteen_bit_data_is_stretched_per_file(tmp_path):
    _discs(tmp_path / "d", 3, (64, 64), dtype=np.uint16, background=2000, value=30000)
    chosen = plan(_recipe(tmp_path / "d"), (224, 224), 24)
    assert chosen["fingerprint"]["bits8"] is False and chosen["normalize"] == "auto"
    assert "own 0.5th and 99.5th percentiles" in chosen["reasons"]["normalize"]


def test_foreground_sampling_reaches_the_stated_share():
    masks = [np.zeros((8, 8), np.int32) for _ in range(30)]
    for m in masks:
        m[0, 0] = 1  # class 1 everywhere
    for m in masks[:3]:
        m[4, 4] = 2  # the rare class in 3 tiles of 30
    index, record = foreground_repeats(masks, 3, "auto")
    positive = np.array([(masks[i] == 2).any() for i in index])
    assert record["class"] == 2 and record["share_before"] == 0.1
    assert positive.mean() >= TARGET_SHARE and record["share_after"] == pytest.approx(positive.mean(), abs=1e-4)
    assert positive.mean() < TARGET_SHARE + 0.05  # just enough repeats: 9 copies of each, 27 of 54
    assert sorted(set(index)) == list(range(30))  # every tile still drawn
    index, _ = foreground_repeats(masks, 3, 0.5)
    assert np.mean([(masks[i] == 2).any() for i in index]) >= 0.5
    index, record = foreground_repeats(masks, 3, 0)
    assert len(index) == 30 and record["reason"] == "off"
    common = [np.ones((4, 4), np.int32)] * 5
    index, record = foreground_repeats(common, 2, "auto")
    assert len(index) == 5 and record["reason"] == "the data already has the target share"


def test_a_run_records_the_fingerprint_and_trains_on_the_sampled_tiles(tiny_backbone, tmp_path):
    from tlmulti.tasks import make_task

    data = {}
    for k, (split, n) in enumerate((("train", 4), ("val", 2), ("test", 2))):
        _discs(tmp_path / split, n, (64, 64), seed=k)  # one small disc in 49 tiles of 16 px
        data[split] = tmp_path / split
    recipe = seg_recipe(tiny_backbone, data, **{"phases.1.epochs": 0})
    run = tlmulti.train(recipe, out=tmp_path / "run")
    inputs = json.loads((run.dir / "data_summary.json").read_text())["inputs"]
    sampling = inputs["choices"]["foreground_sampling"]
    assert sampling["share_before"] < TARGET_SHARE <= sampling["share_after"] and sampling["repeats"] > 1
    assert inputs["fingerprint"]["files"] == 4 and inputs["fingerprint"]["objects"]["1"]["count"] == 4
    assert "foreground_sampling" in (run.dir / "report.html").read_text()

    task = make_task(run.recipe)
    train, _, _ = task.load_splits()
    task.classes = train.classes
    drawn = task.training_examples(train)
    assert len(drawn) > len(train) == sampling["tiles"]
    assert np.mean([(np.asarray(m) == 1).any() for m in drawn.y]) == pytest.approx(sampling["share_after"], abs=1e-4)


def test_foreground_sampling_out_of_range_names_the_key(tiny_backbone, tmp_path):
    data = {s: write_seg_folder(tmp_path / s, 2, seed=k) for k, s in enumerate(("train", "val", "test"))}
    recipe = seg_recipe(tiny_backbone, data, **{"data.foreground_sampling": 1.5})
    with pytest.raises(RecipeError, match="data.foreground_sampling"):
        tlmulti.train(recipe, out=tmp_path / "run")


def test_the_default_fits_a_three_class_intensity_phantom(tiny_backbone, tmp_path):
    """Grey and white differ by intensity only; the default recipe's phases as written (frozen
    decoder phase, then the top group) on the tiny CNN must fit its training images (Dice >= 0.95)."""
    from tlmulti.datasets.phantoms import build
    from tlmulti.tasks import make_task

    build(tmp_path / "ph", "tissue", counts=(6, 2, 2), size=(64, 64))
    folders = {s: tmp_path / "ph" / s for s in ("train", "val", "test")}
    recipe = tlmulti.load_recipe(task="segmentation", overrides=[
        f"backbone.name={tiny_backbone}", f"data.train={folders['train']}", f"data.val={folders['val']}",
        f"data.test={folders['test']}", "data.classes=[background, grey, white]", "callbacks.verbose=0",
        "output.plots=false", "strategy=fixed"])
    run = tlmulti.train(recipe, out=tmp_path / "run")
    task = make_task(run.recipe)
    train, _, _ = task.load_splits()
    fit = task.evaluate(run.model, train)
    assert fit["mean_dice"] >= 0.95, fit["per_class"]


def test_strategy_auto_also_tries_the_full_resolution_input_skip(tiny_backbone, tmp_path):
    from tlmulti.tasks import make_task

    data = {s: write_seg_folder(tmp_path / s, 2, seed=k) for k, s in enumerate(("train", "val", "test"))}
    assert make_task(seg_recipe(tiny_backbone, data)).strategy_variants() == [
        ("input image as full-resolution skip", ["head.image_skip=true"], None)]
    assert make_task(seg_recipe(tiny_backbone, data, **{"head.image_skip": "true"})).strategy_variants() == []
