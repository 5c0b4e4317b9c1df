"""Object-detection data: COCO / VOC / YOLO readers agree, every bad input is one line naming the
file, header-only sizes (DICOM, 16-bit TIFF, EXIF), summary and targets, box-aware augmentation,
and the nuclei-boxes dataset."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from tlmulti import paths
from tlmulti.data.box_augment import box_augmentation
from tlmulti.data.boxes import BoxRecord, box_summary, load_detection_images, read_boxes, scale_targets
from tlmulti.errors import DataError

# Collected before the autouse fixture points TLMULTI_HOME at a fresh folder for each test.
_USER_DOWNLOADS = paths.home() / "downloads"

CLASSES = ["cat", "dog"]
# stem -> (height, width, [(x_min, y_min, x_max, y_max, class id)]) in continuous pixel coordinates
SCENES = {
    "a": (40, 60, [(5, 6, 25, 30, 0), (30, 2, 58, 20, 1), (40, 25, 60, 40, 0)]),
    "b": (50, 30, [(0, 0, 30, 50, 1)]),  # a box on every edge of its image
    "c": (32, 32, []),  # a negative image
}


def _png(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _write_coco(root, scenes=SCENES, **image_extra):
    images, annotations = [], []
    for k, (stem, (h, w, boxes)) in enumerate(scenes.items(), 1):
        _png(root / "images" / f"{stem}.png", h, w)
        images.append({"id": k, "file_name": f"{stem}.png", "width": w, "height": h, **image_extra})
        for x0, y0, x1, y1, c in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": c + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0})
    annotations.append({"id": 99, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1})  # skipped
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root / "annotations.json"


def _voc_xml(filename, h, w, boxes, difficult=()):
    objects = "".join(
        f"<object><name>{CLASSES[c]}</name><difficult>{int(i in difficult)}</difficult><bndbox><xmin>{x0 + 1}</xmin>"
        f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for i, (x0, y0, x1, y1, c) in enumerate(boxes))
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")


def _write_voc(root, scenes=SCENES):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, (h, w, boxes) in scenes.items():
        _png(root / "JPEGImages" / f"{stem}.png", h, w)
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(f"{stem}.png", h, w, boxes, difficult=(1,)))
    return root


def _write_yolo(root, scenes=SCENES):
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for stem, (h, w, boxes) in scenes.items():
        _png(root / "images" / f"{stem}.png", h, w)
        if boxes:  # no label file: a negative image
            lines = [f"{c} {(x0 + x1) / 2 / w:.8f} {(y0 + y1) / 2 / h:.8f} {(x1 - x0) / w:.8f} {(y1 - y0) / h:.8f}"
                     for x0, y0, x1, y1, c in boxes]
            (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _by_stem(records):
    return {r.path.stem: r for r in records}


def _expect(records, scenes=SCENES):
    got = _by_stem(records)
    assert sorted(got) == sorted(scenes)
    for stem, (h, w, boxes) in scenes.items():
        r = got[stem]
        assert r.size == (h, w)
        assert r.boxes.dtype == np.float32 and r.boxes.shape == (len(boxes), 4)
        assert r.labels.dtype == np.int32 and r.labels.tolist() == [b[4] for b in boxes]
        np.testing.assert_allclose(r.boxes, np.asarray([b[:4] for b in boxes], np.float32).reshape(-1, 4), atol=1e-4)


def _error(ref, match, classes=None):
    with pytest.raises(DataError, match=match) as info:
        read_boxes(ref, classes)
    assert "\n" not in str(info.value)
    return str(info.value)


# -- the three formats --------------------------------------------------------------------------


def test_coco_voc_and_yolo_read_the_same_boxes(tmp_path):
    coco, voc, yolo = _write_coco(tmp_path / "coco"), _write_voc(tmp_path / "voc"), _write_yolo(tmp_path / "yolo")
    for ref in (coco, tmp_path / "coco", voc, yolo):  # a COCO file, or the folder holding it
        records, classes = read_boxes(ref)
        assert classes == CLASSES, ref
        _expect(records)
    voc_records = _by_stem(read_boxes(voc)[0])
    assert voc_records["a"].difficult.tolist() == [False, True, False]
    assert _by_stem(read_boxes(coco)[0])["a"].difficult.tolist() == [False, False, False]


def test_voc_xml_beside_images_and_negatives_without_xml(tmp_path):
    for stem, (h, w, boxes) in SCENES.items():
        _png(tmp_path / f"{stem}.png", h, w)
        if boxes:
            (tmp_path / f"{stem}.xml").write_text(_voc_xml(f"{stem}.jpg", h, w, boxes))  # found by stem
    records, classes = read_boxes(tmp_path)
    assert classes == CLASSES
    _expect(records)


def test_yolo_data_yaml_splits_and_names(tmp_path):
    root = _write_yolo(tmp_path / "yolo")
    (root / "classes.txt").unlink()
    other = tmp_path / "yolo_val"
    _write_yolo(other, {"c": SCENES["c"], "b": SCENES["b"]})
    yaml_file = root / "data.yaml"
    yaml_file.write_text(f"path: .\ntrain: images\nval: {other / 'images'}\nnames:\n  0: cat\n  1: dog\n")
    for ref in (yaml_file, root):
        records, classes = read_boxes(ref)
        assert classes == CLASSES
        _expect(records)
    val, _ = read_boxes(f"{yaml_file}:val", classes=CLASSES)
    _expect(val, {"c": SCENES["c"], "b": SCENES["b"]})
    (root / "list.txt").write_text("images/a.png\nimages/c.png\n")
    yaml_file.write_text("train: list.txt\nnames: [cat, dog]\n")
    _expect(read_boxes(yaml_file)[0], {"a": SCENES["a"], "c": SCENES["c"]})
    _error(f"{yaml_file}:test", r"has no 'test' split \(it has: train\)")


def test_validation_classes_map_by_name(tmp_path):
    voc = _write_voc(tmp_path / "voc")
    records, classes = read_boxes(voc, classes=["bird", "dog", "cat"])
    assert classes == ["bird", "dog", "cat"]
    assert _by_stem(records)["a"].labels.tolist() == [2, 1, 2]
    message = _error(voc, r"has class 'dog', which is not among the known classes \(cat\)", classes=["cat"])
    assert "a.xml" in message or "b.xml" in message
    # YOLO ids index the training classes when the data has no names of its own
    yolo = _write_yolo(tmp_path / "yolo")
    (yolo / "classes.txt").unlink()
    _expect(read_boxes(yolo, classes=CLASSES)[0])
    _error(yolo, r"has no class names; add a classes.txt")


def test_negatives_kept_and_all_negative_data_only_for_evaluation(tmp_path):
    records, _ = read_boxes(_write_coco(tmp_path / "coco"))
    assert _by_stem(records)["c"].boxes.shape == (0, 4) and _by_stem(records)["c"].labels.shape == (0,)
    empty = _write_coco(tmp_path / "empty", {"c": SCENES["c"], "b": (50, 30, [])})
    _error(empty, r"has 2 images but no boxes; training needs labelled boxes")
    records, classes = read_boxes(empty, classes=CLASSES)
    assert classes == CLASSES and all(len(r.labels) == 0 for r in records)


# -- bad inputs: one line naming the file and the fix -------------------------------------------


def _coco_with(tmp_path, change):
    path = _write_coco(tmp_path / "coco")
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, match", [
    (lambda d: d["annotations"][0].update(bbox=[50, 5, 12, 10]),
     r"annotation id 1 \(image 'a.png'\): box \[50, 5, 62, 15\].* lies outside the 60x40 .*image by 2 pixels"),
    (lambda d: d["annotations"][0].update(bbox=[5, 5, 0, 10]), r"annotation id 1 .*has zero or negative area"),
    (lambda d: d["annotations"][0].update(bbox=[5, 5, 4, -3]), r"annotation id 1 .*has zero or negative area"),
    (lambda d: d["annotations"][0].update(category_id=7),
     r"annotation id 1 has unknown category id 7 \(known: 1 'cat', 2 'dog'\); add it to 'categories'"),
    (lambda d: d["annotations"][0].update(image_id=42), r"annotation id 1 refers to image_id 42, which is not in"),
    (lambda d: d["annotations"][0].pop("bbox"), r"annotation id 1 is malformed: it needs .*bbox \[x, y, width"),
    (lambda d: d["images"][0].update(file_name="gone.png"), r"image id 1 \('gone.png'\): the image is missing"),
    (lambda d: d["images"][0].update(width=61),
     r"image id 1 \('a.png'\): declared 61x40 \(width x height\) but the file is 60x40 as read"),
    (lambda d: d["categories"].clear(), r"unknown category id"),
])
def test_coco_errors(tmp_path, change, match):
    path = _coco_with(tmp_path, change)
    assert str(path) in _error(path, match)


def test_box_within_one_pixel_is_clipped(tmp_path):
    path = _coco_with(tmp_path, lambda d: d["annotations"][0].update(bbox=[-0.9, 5, 61.7, 35.5]))
    np.testing.assert_allclose(_by_stem(read_boxes(path)[0])["a"].boxes[0], [0, 5, 60, 40], atol=1e-5)


def test_malformed_files_and_images(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": [}')
    assert str(bad_json) in _error(bad_json, r"is not valid JSON \(line 1, column 13")
    voc = _write_voc(tmp_path / "voc")
    (voc / "Annotations" / "a.xml").write_text("<annotation><object><name>cat</name>")
    _error(voc, r"a.xml' is not valid XML")
    (voc / "Annotations" / "a.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>1</xmin>"
                                               "</bndbox></object></annotation>")
    _error(voc, r"a.xml' object 1: needs <name> and <bndbox> with numbers xmin, ymin, xmax, ymax")
    (voc / "Annotations" / "a.xml").write_text('<!DOCTYPE a [<!ENTITY x "y">]><annotation/>')
    _error(voc, r"a.xml' is not a Pascal VOC annotation")
    (voc / "Annotations" / "a.xml").write_text(_voc_xml("zzz.png", 40, 60, []).replace("zzz", "nothing"))
    (voc / "Annotations" / "a.xml").rename(voc / "Annotations" / "q.xml")
    _error(voc, r"q.xml': its image \('nothing.png'\) is missing from")
    yolo = _write_yolo(tmp_path / "yolo")
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
    _error(yolo, r"a.txt' line 2: expected 'class x_center y_center width height'")
    (yolo / "labels" / "a.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    _error(yolo, r"a.txt' line 1: class id 5 is not one of the 2 class ids")
    (yolo / "labels" / "a.txt").write_text("0 30 20 10 10\n")  # pixels, not fractions
    _error(yolo, r"a.txt' line 1: box .* lies outside .*YOLO values are fractions")
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "labels" / "zz.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    _error(yolo, r"Label file '.*zz.txt' has no image")


def test_unsupported_and_unreadable_images(tmp_path):
    path = _coco_with(tmp_path, lambda d: d["images"][0].update(file_name="a.webp"))
    (tmp_path / "coco" / "images" / "a.webp").write_bytes(b"RIFF")
    _error(path, r"a.webp' \(.*image id 1.*\) is not a supported image")
    path = _coco_with(tmp_path, lambda d: None)
    (tmp_path / "coco" / "images" / "a.png").write_bytes(b"not a png")
    _error(path, r"Cannot read .*a.png")
    _error(tmp_path / "nowhere", r"does not exist; give COCO")
    (tmp_path / "plain").mkdir()
    _error(tmp_path / "plain", r"is not detection data; give COCO")


# -- image files: DICOM, 16-bit TIFF, EXIF rotation ---------------------------------------------


def _dicom(path, pixels):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_16bit_tiff_and_exif_sizes_as_read(tmp_path):
    import tifffile

    folder = tmp_path / "images"
    folder.mkdir()
    dicom = np.zeros((20, 30), np.uint16)
    dicom[:, 15:] = 3000  # right half bright
    _dicom(folder / "scan.dcm", dicom)
    tiff = np.zeros((24, 36), np.uint16)
    tiff[12:] = 60000  # bottom half bright
    tifffile.imwrite(str(folder / "cells.tif"), tiff)
    photo = Image.new("RGB", (40, 20), (0, 0, 0))  # stored 40 wide, 20 high, shown turned a quarter
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(folder / "phone.jpg", exif=exif.tobytes())
    coco = {"images": [{"id": 1, "file_name": "scan.dcm", "width": 30, "height": 20},
                       {"id": 2, "file_name": "cells.tif", "width": 36, "height": 24},
                       {"id": 3, "file_name": "phone.jpg", "width": 20, "height": 40}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [16, 2, 14, 18]},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 12, 36, 12]},
                            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [2, 30, 16, 9]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    records, _ = read_boxes(tmp_path / "annotations.json")
    assert [r.size for r in records] == [(20, 30), (24, 36), (40, 20)]
    x = load_detection_images(records, (16, 16))
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.uint8
    assert x[0, :, :6].max() < 50 and x[0, :, 10:].min() > 200  # DICOM right half, stretched
    assert x[1, :6].max() < 50 and x[1, 10:].min() > 200  # 16-bit TIFF bottom half
    assert load_detection_images(records[:1], (8, 12), channels=1).shape == (1, 8, 12, 1)
    coco["images"][2].update(width=40, height=20)  # the stored size, before EXIF rotation
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    _error(tmp_path / "annotations.json", r"declared 40x20 \(width x height\) but the file is 20x40 as read")


def test_multi_frame_files_are_refused(tmp_path):
    import tifffile

    (tmp_path / "images").mkdir()
    tifffile.imwrite(str(tmp_path / "images" / "stack.tif"), np.zeros((5, 10, 10), np.uint16))
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("x\n")
    _error(tmp_path, r"stack.tif' holds 5 images .*save the frames as separate files")


# -- summary and targets ------------------------------------------------------------------------


def _records():
    def rec(name, size, rows):
        rows = np.asarray(rows, np.float32).reshape(-1, 5)
        return BoxRecord(path=name, boxes=rows[:, :4], labels=rows[:, 4].astype(np.int32), size=size)

    return [rec("a", (100, 200), [(0, 0, 10, 10, 0), (50, 20, 90, 60, 1), (100, 50, 200, 100, 1)]),
            rec("b", (50, 50), [(10, 10, 14, 19, 0)]),
            rec("c", (30, 40), [])]


def test_box_summary_numbers():
    summary = box_summary(_records(), CLASSES)
    assert summary["images"] == 3 and summary["images_without_boxes"] == 1 and summary["boxes"] == 4
    assert summary["boxes_per_class"] == {"cat": 2, "dog": 2} and summary["boxes_per_image_max"] == 3
    sides = np.sqrt([100, 1600, 5000, 36])
    side = summary["box_side"]
    assert side["min"] == 6.0 and side["max"] == pytest.approx(np.sqrt(5000), abs=1e-3)
    assert side["median"] == pytest.approx(np.median(sides), abs=1e-3)
    assert side["p10"] == pytest.approx(np.percentile(sides, 10), abs=1e-3)
    assert box_summary(_records()[2:], CLASSES)["box_side"] is None


def test_scale_targets_scale_and_pad():
    y = scale_targets(_records(), (50, 100))
    assert y.shape == (3, 3, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y[0], [[0, 0, 5, 5, 0], [25, 10, 45, 30, 1], [50, 25, 100, 50, 1]])
    np.testing.assert_allclose(y[1], [[20, 10, 28, 19, 0], [-1] * 5, [-1] * 5])
    assert (y[2] == -1).all()
    y = scale_targets(_records(), (100, 200), max_boxes=2)  # the two largest boxes, in their order
    np.testing.assert_allclose(y[0], [[50, 20, 90, 60, 1], [100, 50, 200, 100, 1]])
    assert scale_targets(_records()[2:], (10, 10)).shape == (1, 1, 5)


# -- augmentation -------------------------------------------------------------------------------

H, W = 64, 80
BOXES = [(8, 6, 30, 26), (44, 30, 76, 58), (20, 40, 40, 60)]  # one filled rectangle per channel


def _scene():
    image = np.zeros((H, W, 3), np.uint8)
    for c, (x0, y0, x1, y1) in enumerate(BOXES):
        image[y0:y1, x0:x1, c] = 255
    targets = np.full((6, 5), -1, np.float32)
    targets[:3] = [(*b, c % 2) for c, b in enumerate(BOXES)]
    targets[3] = (70, 2, 73, 5, 0)  # small, not drawn
    return image, targets


def _extent(image, c):
    ys, xs = np.nonzero(image[..., c] > 127)
    return None if not len(xs) else np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _run(fn, image, targets, k):
    import tensorflow as tf

    out_image, out_targets = fn(tf.constant(image), tf.constant(targets), tf.constant([k, 7], tf.int32))
    return out_image.numpy(), out_targets.numpy()


def test_flips_move_boxes_exactly_and_twice_is_identity():
    fn = box_augmentation(flip="both", scale=None, seed=3)
    image, targets = _scene()
    seen = set()
    for k in range(12):
        out, t = _run(fn, image, targets, k)
        assert out.shape == image.shape and out.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(_extent(out, c), t[c, :4])
        np.testing.assert_array_equal(t[:, 4], targets[:, 4])
        assert (t[4:] == -1).all()
        seen.add((t[0, 0] != targets[0, 0], t[0, 1] != targets[0, 1]))
        back, t2 = _run(fn, out, t, k)
        np.testing.assert_array_equal(back, image)
        np.testing.assert_array_equal(t2, targets)
    assert {(True, False), (False, True)} <= seen or (True, True) in seen
    assert any(h for h, _ in seen) and any(v for _, v in seen)


def test_zoom_in_crops_keep_boxes_on_their_pixels_and_drop_cut_ones():
    fn = box_augmentation(flip="horizontal", scale=(2.0, 2.0), seed=1)
    image, targets = _scene()
    kept = dropped = clipped = 0
    for k in range(30):
        out, t = _run(fn, image, targets, k)
        assert (t[4:] == -1).all()
        for c in range(3):
            visible = int((out[..., c] > 127).sum())
            bw, bh = 2 * (BOXES[c][2] - BOXES[c][0]), 2 * (BOXES[c][3] - BOXES[c][1])  # zoomed size
            full = bw * bh
            if t[c, 4] < 0:  # less than 40% of it in the frame (pixel count within half a pixel per edge)
                dropped += 1
                assert (t[c] == -1).all() and visible < 0.4 * full + (bw + bh)
                continue
            kept += 1
            assert t[c, 4] == targets[c, 4]
            np.testing.assert_allclose(_extent(out, c), t[c, :4], atol=1.0)
            assert (t[c, 2] - t[c, 0]) * (t[c, 3] - t[c, 1]) >= 0.4 * full - 1e-3
            clipped += bool(t[c, 0] == 0 or t[c, 1] == 0 or t[c, 2] == W or t[c, 3] == H)
    assert kept and dropped and clipped


def test_zoom_out_pads_and_drops_tiny_boxes():
    fn = box_augmentation(flip="none", scale=(0.5, 0.5), seed=2)
    image, targets = _scene()
    for k in range(5):
        out, t = _run(fn, image, targets, k)
        for c in range(3):
            np.testing.assert_allclose(t[c, 2:4] - t[c, :2], (np.asarray(BOXES[c][2:]) - BOXES[c][:2]) * 0.5,
                                       atol=1e-4)
            np.testing.assert_allclose(_extent(out, c), t[c, :4], atol=1.0)
        assert (t[3] == -1).all()  # 1.5 pixels a side after shrinking: dropped
        assert (t[4:] == -1).all()
        corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
        assert any(np.abs(p.astype(int) - image.mean(axis=(0, 1))).max() <= 1 for p in corners)  # mean padding


def test_augmentation_is_seeded_and_runs_in_tf_data():
    import tensorflow as tf

    fn = box_augmentation(flip="both", scale=(0.7, 1.4), seed=5)
    image, targets = _scene()
    a, b = _run(fn, image, targets, 3), _run(fn, image, targets, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert any(not np.array_equal(_run(fn, image, targets, k)[1], a[1]) for k in range(4, 8))
    ds = tf.data.Dataset.from_tensors((image, targets, tf.constant([3, 7], tf.int32))).map(fn)
    assert ds.element_spec[0].shape == (H, W, 3) and ds.element_spec[1].shape == (6, 5)
    (x, y), = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(y, a[1])
    np.testing.assert_array_equal(x, a[0])


def test_augmentation_arguments():
    assert box_augmentation(flip="none", scale=None) is None
    assert box_augmentation(flip="none", scale=(1, 1)) is None
    with pytest.raises(DataError, match="data.augment.flip must be one of none, horizontal"):
        box_augmentation(flip="diagonal")
    with pytest.raises(DataError, match=r"data.augment.scale must be \[low, high\]"):
        box_augmentation(scale=(0, 1.2))


# -- nuclei-boxes -------------------------------------------------------------------------------


def test_cut_nuclei_keep_their_box_when_half_is_inside():
    from tlmulti.datasets.nuclei_boxes import tile_annotations

    instances = np.zeros((20, 20), np.uint16)
    instances[2:7, 2:7] = 1  # inside the 10x10 tile at (0, 0)
    instances[3:6, 7:13] = 2  # 3 of its 6 columns inside: kept, clipped
    instances[9:14, 3:6] = 3  # 1 of its 5 rows inside: left out
    kept, left_out = tile_annotations(instances, 0, 0, tile=10)
    assert [(e["label"], e["bbox"], e["area"]) for e in kept] == [(1, [2, 2, 5, 5], 25), (2, [7, 3, 3, 3], 9)]
    assert left_out == 1


def _check_built(root, image, instances):
    """Every tile is the image's pixels, every box the tight box of one label with at least half of
    its pixels in the tile, every such label has its box; tiles of different splits never overlap."""
    import tifffile

    from tlmulti.datasets import dataset_path

    areas = np.bincount(instances.ravel())
    owner = np.full(image.shape, "", object)
    counts, classes = {}, None
    for split in ("train", "val", "test"):
        records, found = read_boxes(dataset_path(f"dataset:nuclei-boxes/{split}"), classes=classes)
        classes = classes or found
        assert found == ["nucleus"]
        for r in records:
            y, x = (int(v) for v in re.match(r"nuclei_y(\d+)_x(\d+)", r.path.stem).groups())
            h, w = r.size
            assert np.array_equal(tifffile.imread(r.path), image[y:y + h, x:x + w])
            assert set(owner[y:y + h, x:x + w].ravel()) <= {"", split}
            owner[y:y + h, x:x + w] = split
            part = instances[y:y + h, x:x + w]
            expected = set()
            for label in np.unique(part[part > 0]):
                ys, xs = np.nonzero(part == label)
                if 2 * len(ys) >= areas[label]:
                    expected.add((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
            got = {tuple(int(v) for v in b) for b in r.boxes}
            assert got == expected and len(got) == len(r.boxes)
        counts[split] = (len(records), sum(len(r.labels) for r in records))
        assert counts[split][0] > 0 and counts[split][1] > 0, split
    assert json.loads((root / "dataset.json").read_text())["counts"]["val"]["boxes"] == counts["val"][1]
    assert "train" in (root / "README.txt").read_text()
    return counts


def test_nuclei_boxes_from_a_small_wheel(tmp_path, monkeypatch):
    import tifffile

    from tlmulti.datasets import prepare

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (320, 320)).astype(np.uint16)
    instances = np.zeros((320, 320), np.uint16)
    for label, (y, x) in enumerate(((r, c) for r in range(4, 310, 23) for c in range(6, 310, 27)), 1):
        instances[y:y + int(rng.integers(6, 18)), x:x + int(rng.integers(6, 20))] = label
    wheel = tmp_path / "stardist-0.9.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, array in (("img2d.tif", image), ("mask2d.tif", instances)):
            buf = io.BytesIO()
            tifffile.imwrite(buf, array)
            z.writestr(f"stardist/data/images/{name}", buf.getvalue())
    monkeypatch.setenv("TLMULTI_STARDIST_WHEEL", str(wheel))
    counts = _check_built(prepare("nuclei-boxes"), image, instances)
    assert counts["train"][0] == 4 * 6 and counts["val"][0] == 1 and counts["test"][0] == 2


def test_nuclei_boxes_from_the_real_wheel(monkeypatch):
    from tlmulti.datasets import prepare
    from tlmulti.datasets.nuclei import VERSION, load

    wheels = sorted(_USER_DOWNLOADS.glob(f"stardist-{VERSION}-*.whl"))
    if not wheels:
        pytest.skip(f"stardist wheel not in {_USER_DOWNLOADS}; run 'tlmulti datasets prepare nuclei' once")
    monkeypatch.setenv("TLMULTI_STARDIST_WHEEL", str(wheels[0]))
    image, instances = load(wheels[0])
    counts = _check_built(prepare("nuclei-boxes"), image, instances)
    assert counts == {"train": (60, 257), "val": (4, 24), "test": (6, 24)}
