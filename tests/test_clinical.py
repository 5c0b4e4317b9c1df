"""Patient-level splits and clinical metrics: group splits, AUROC / AUPRC / thresholds / ECE
against scikit-learn and hand computations, bootstrap intervals, and a split-by run end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.builders import write_image_folder
from tlmulti.cli import main

TINY = ["--backbone", "tiny_cnn.test", "--epochs", "2", "--batch-size", "4",
        "--set", "data.image_size=[16, 16]", "--set", "callbacks.verbose=0", "--set", "head.hidden=[]",
        "--set", "evaluation.bootstrap=200"]


def test_group_split_keeps_groups_whole_and_stays_stratified():
    from tlmulti.data import group_split

    # 10 patients, 4 images each; patients 0-4 are 'benign', 5-9 'malignant'
    groups = np.repeat([f"p{i}" for i in range(10)], 4)
    labels = np.repeat([0] * 5 + [1] * 5, 4)
    keep, held = group_split(labels, groups, 0.2, seed=3)
    assert not set(groups[keep]) & set(groups[held])
    assert len(keep) + len(held) == 40 and len(set(groups[held])) == 2
    assert sorted(labels[held].tolist()) == [0] * 4 + [1] * 4  # one patient of each class
    again = group_split(labels, groups, 0.2, seed=3)
    assert np.array_equal(again[1], held)


def test_group_split_with_too_few_groups_is_a_clear_error():
    from tlmulti.data import group_split
    from tlmulti.errors import DataError

    with pytest.raises(DataError, match="at least 5 distinct groups.*found 3"):
        group_split([0, 1, 0, 1, 0, 1], ["a", "a", "b", "b", "c", "c"], 0.2)


def test_group_split_with_fewer_rows_per_class_than_folds_holds_out_whole_groups():
    from tlmulti.data import group_split

    # 8 volumes, one manifest row each (4 per class): too few rows for 5 stratified folds
    groups = np.array([f"v{i}" for i in range(8)])
    labels = np.array([0, 1] * 4)
    keep, held = group_split(labels, groups, 0.2, seed=1)
    assert len(keep) + len(held) == 8 and not set(groups[keep]) & set(groups[held])
    assert sorted(labels[held].tolist()) == [0, 1]  # one group of each class
    assert np.array_equal(group_split(labels, groups, 0.2, seed=1)[1], held)
    draws = {tuple(group_split(labels, groups, 0.2, seed=s)[1]) for s in range(6)}
    assert len(draws) > 1  # the seed decides which groups


def test_binary_metrics_match_scikit_learn_and_hand_computation():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from tlmulti.evaluation import classification_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(0.35 * y + rng.random(300) * 0.65, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["benign", "malignant"])
    assert m["positive_class"] == "malignant"
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p1))
    # Youden's J by brute force over every candidate threshold
    j = [((p1[y == 1] >= t).mean() + (p1[y == 0] < t).mean() - 1, t) for t in np.unique(p1)]
    best_j = max(j)[0]
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(best_j)
    assert m["sensitivity"] == pytest.approx((p1[y == 1] >= m["threshold"]).mean())
    # the other class as positive: AUROC of its own probability
    other = classification_metrics(y, probs, ["benign", "malignant"], positive=0, threshold=0.5)
    assert other["positive_class"] == "benign" and other["threshold"] == 0.5
    assert other["auroc"] == pytest.approx(roc_auc_score(y == 0, 1 - p1))
    assert other["sensitivity"] == pytest.approx((p1[y == 0] <= 0.5).mean())


def test_multiclass_auroc_and_ece():
    from sklearn.metrics import roc_auc_score

    from tlmulti.evaluation import calibration, classification_metrics

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 50)
    probs = rng.dirichlet([1, 1, 1], 150)
    probs[np.arange(150), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert "sensitivity" not in m
    # ECE by hand: 2 bins, confidences below / above 0.5
    conf, correct = probs.max(1), probs.argmax(1) == y
    lo, hi = conf <= 0.5, conf > 0.5
    expected = sum(mask.mean() * abs(correct[mask].mean() - conf[mask].mean()) for mask in (lo, hi) if mask.any())
    assert calibration(y, probs, bins=2)["ece"] == pytest.approx(expected)
    perfect = calibration([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect["ece"] == pytest.approx(0.0)


def test_bootstrap_intervals_contain_the_estimate_and_follow_the_seed():
    from tlmulti.evaluation import classification_metrics

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    a = classification_metrics(y, probs, ["n", "p"], bootstrap=300, seed=7)
    b = classification_metrics(y, probs, ["n", "p"], bootstrap=300, seed=7)
    c = classification_metrics(y, probs, ["n", "p"], bootstrap=300, seed=8)
    assert a["ci"] == b["ci"] and a["ci"] != c["ci"]
    for key in ("accuracy", "auroc"):
        low, high = a["ci"][key]
        assert low <= a[key] <= high and high - low > 0.01


def _patient_manifest(root, patients, per_patient=3, name="manifest.csv"):
    """A manifest of coloured PNGs with a patient column (class decides the colour)."""
    write_image_folder(root / "img", classes=("benign", "malignant"), per_class=len(patients) * per_patient // 2)
    rows = []
    for label in ("benign", "malignant"):
        files = sorted((root / "img" / label).glob("*.png"))
        mine = [p for i, p in enumerate(patients) if (i % 2 == 0) == (label == "benign")]
        for k, f in enumerate(files):
            rows.append({"path": str(f), "label": label, "patient": mine[k // per_patient % len(mine)]})
    with open(root / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return root / name


def test_split_by_patient_run_writes_splits_and_clinical_metrics(tiny_backbone, tmp_path):
    train = _patient_manifest(tmp_path / "train", [f"p{i}" for i in range(10)])
    test = _patient_manifest(tmp_path / "test", [f"q{i}" for i in range(4)])
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--test-data", str(test),
                                       "--split-by", "patient", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "splits.csv") as f:
        rows = list(csv.DictReader(f))
    patient = {r["path"]: r["patient"] for r in csv.DictReader(open(train))}
    by_split = {}
    for r in rows:
        if r["split"] in ("train", "val"):
            by_split.setdefault(r["split"], set()).add(patient[r["path"]])
    assert by_split["train"] and by_split["val"] and not by_split["train"] & by_split["val"]
    assert sum(r["split"] == "test" for r in rows) == 12
    m = json.loads((out / "metrics.json").read_text())
    test_m, val_m = m["test"], m["val"]
    for key in ("auroc", "auprc", "sensitivity", "specificity", "threshold", "ece", "ci"):
        assert key in test_m, key
    assert test_m["threshold"] == val_m["threshold"]  # chosen on validation, applied to test
    assert test_m["threshold_from"] == "validation data (Youden's J)"
    assert test_m["ci"]["resamples"] == 200
    assert (out / "reliability.png").stat().st_size > 1000
    assert json.loads((out / "run.json").read_text())["threshold"] == val_m["threshold"]
    # a later evaluation uses the saved threshold
    again = CliRunner().invoke(main, ["vision", "evaluate", str(out), "--data", str(test), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["threshold"] == val_m["threshold"]
    text = CliRunner().invoke(main, ["vision", "evaluate", str(out), "--data", str(test)]).output
    assert "AUROC" in text and "95% CI" in text and "sensitivity" in text


def test_split_by_with_few_rows_per_class_trains(tiny_backbone, tmp_path):
    train = _patient_manifest(tmp_path / "train", [f"p{i}" for i in range(8)], per_patient=1)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--split-by", "patient",
                                       *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "splits.csv") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    label = {r["path"]: r["label"] for r in csv.DictReader(open(train))}
    assert len(val) == 2 and {label[r["path"]] for r in val} == {"benign", "malignant"}


def test_patient_in_train_and_test_is_an_error(tiny_backbone, tmp_path):
    train = _patient_manifest(tmp_path / "train", [f"p{i}" for i in range(10)])
    test = _patient_manifest(tmp_path / "test", ["p3", "q1"])
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--test-data", str(test),
                                       "--split-by", "patient", *TINY, "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "'patient' values in both the training and the test data" in result.output and "p3" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_split_by_a_missing_column_and_a_wrong_positive_class(tiny_backbone, tmp_path):
    train = _patient_manifest(tmp_path / "train", [f"p{i}" for i in range(10)])
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--split-by", "subject",
                                       *TINY, "--out", str(tmp_path / "a")])
    assert result.exit_code != 0 and "Cannot split by 'subject'" in result.output and "patient" in result.output
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--set",
                                       "data.positive_class=tumour", *TINY, "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "data.positive_class" in result.output and "benign, malignant" in result.output
    assert not (tmp_path / "b").exists()  # refused before training: no run folder left behind


# -- medical files for image classification --------------------------------------------------------


def _volumes(root, n_per_class=3, slices=4):
    """NIfTI volumes of 16x16 slices, float intensities: 'lesion' volumes have a bright square."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for label in ("normal", "lesion"):
        for i in range(n_per_class):
            vol = rng.normal(100.0, 5.0, (16, 16, slices)).astype(np.float32)
            if label == "lesion":
                vol[4:12, 4:12, :] += 400.0
            path = root / f"{label}_{i}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
            rows.append({"path": path.name, "label": label})
    with open(root / "volumes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "volumes.csv"


def test_nifti_volumes_are_classified_per_slice_and_kept_in_one_split(tiny_backbone, tmp_path):
    manifest = _volumes(tmp_path / "vols")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(manifest), "--set", "data.val_split=0.34",
                                       *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "splits.csv") as f:
        rows = list(csv.DictReader(f))
    where = {}
    for r in rows:
        where.setdefault(r["path"], set()).add(r["split"])
    assert len(where) == 6 and all(len(s) == 1 for s in where.values())  # a volume is never split
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["train"] + data["val"] == 24  # 6 volumes x 4 slices
    preds = CliRunner().invoke(main, ["vision", "predict", str(out), str(tmp_path / "vols" / "lesion_0.nii.gz"),
                                      "--json"])
    assert preds.exit_code == 0, preds.output
    names = [p["input"] for p in json.loads(preds.output)]
    assert len(names) == 4 and names[0].endswith("lesion_0.nii.gz#slice0")


def test_dicom_rescale_and_window_and_16_bit_png(tmp_path):
    from PIL import Image
    from pydicom.data import get_testdata_file

    from tlmulti.data.images import load_slices
    from tlmulti.data.medical import read_stack

    ct = get_testdata_file("CT_small.dcm")
    hu, _ = read_stack(ct)
    window = load_slices(ct, (128, 128), 1, normalize="window", window=(40, 400))
    expected = np.clip((hu[0].astype(np.float32) - (40 - 200)) / 400, 0, 1) * 255 + 0.5
    assert window.shape == (1, 128, 128, 1)
    assert np.abs(window[0].astype(int) - expected.astype(np.uint8).astype(int)).max() <= 1
    wide = np.linspace(0, 60000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    img = load_slices(tmp_path / "wide.png", (32, 32), 3)
    assert img.dtype == np.uint8 and img.shape == (1, 32, 32, 3) and img.min() == 0 and img.max() == 255


def test_focal_loss_on_integer_labels():
    import keras

    from tlmulti.heads.classification import classification_loss

    y = np.array([0, 2, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]], "float32")
    focal = classification_loss(loss="focal", focal_gamma=2.0)
    ref = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0)(np.eye(3)[y], p)
    assert float(focal(y, p)) == pytest.approx(float(ref), rel=1e-5)
    ce = float(keras.losses.SparseCategoricalCrossentropy()(y, p))
    assert float(classification_loss(loss="focal", focal_gamma=0.0)(y, p)) == pytest.approx(ce, rel=1e-5)
    assert float(focal(y, p)) < ce  # confident examples count less
    restored = keras.losses.deserialize(keras.losses.serialize(focal))
    assert restored.gamma == 2.0


def test_real_nifti_and_multiframe_sources_give_one_example_per_slice():
    import os

    import nibabel as nib
    from nibabel.testing import data_path

    from tlmulti.data.images import load_files

    path = os.path.join(data_path, "anatomical.nii")
    volume = nib.as_closest_canonical(nib.load(path))
    x, origin = load_files([path, path], (32, 32), 3, normalize="percentile", percentiles=(1, 99), axis=2)
    assert x.shape == (2 * volume.shape[2], 32, 32, 3) and x.dtype == np.uint8
    assert origin.tolist() == [0] * volume.shape[2] + [1] * volume.shape[2]
    assert x.max() == 255 and x.min() == 0


def test_bootstrap_auroc_by_ranks_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    from tlmulti.evaluation.classification import _rank_auroc

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, (4, 300)).astype(bool)
    scores = np.round(rng.random((4, 300)) * 0.5 + 0.3 * y, 2)  # rounded: many ties
    expected = [roc_auc_score(y[i], scores[i]) for i in range(4)]
    np.testing.assert_allclose(_rank_auroc(y, scores), expected, rtol=1e-12)
    assert np.isnan(_rank_auroc(np.zeros((1, 5), bool), np.arange(5.0)[None]))[0]


def test_split_by_works_for_text_manifests(tmp_path):
    from tlmulti.recipe import from_dict
    from tlmulti.training.trainer import make_task

    rows = [{"text": f"message {i} about {'cats' if i % 2 else 'dogs'}", "label": "cat" if i % 2 else "dog",
             "thread": f"t{i // 4}"} for i in range(40)]
    with open(tmp_path / "mails.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "thread"])
        writer.writeheader()
        writer.writerows(rows)
    task = make_task(from_dict({"task": "text_classification",
                                "data": {"train": str(tmp_path / "mails.csv"), "split_by": "thread"}}))
    train, val, _ = task.load_splits()
    assert len(val) and not set(train.meta["thread"]) & set(val.meta["thread"])
