"""Multi-label image classification end to end with a tiny backbone: reader, sigmoid head,
per-label thresholds chosen on validation, metrics against scikit-learn, predict and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.builders import COLOURS, write_findings
from tlmulti.cli import main

TINY = ["--task", "multilabel_image_classification", "--backbone", "tiny_cnn.test", "--batch-size", "8",
        "--set", "data.image_size=[16, 16]", "--set", "callbacks.verbose=0", "--set", "head.hidden=[]",
        "--set", "evaluation.bootstrap=100", "--set", "callbacks.early_stopping.enabled=false",
        "--set", "phases=[{epochs: 25, learning_rate: 0.01}]"]


def test_multilabel_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    from tlmulti.evaluation import multilabel_metrics

    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.3).astype(int)
    probs = np.clip(0.4 * y + 0.6 * rng.random((200, 3)), 0, 1)
    m = multilabel_metrics(y, probs, ["a", "b", "c"], thresholds=[0.5, 0.5, 0.5])
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    pred = (probs >= 0.5).astype(int)
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["subset_accuracy"] == pytest.approx((pred == y).all(1).mean())
    best = multilabel_metrics(y, probs, ["a", "b", "c"])  # per-label thresholds chosen for best F1
    for name in "abc":
        assert best["per_class"][name]["f1"] >= m["per_class"][name]["f1"] - 1e-12


def test_multilabel_run_end_to_end(tiny_backbone, tmp_path):
    train, _ = write_findings(tmp_path / "train", 80, seed=0)
    test, test_rows = write_findings(tmp_path / "test", 30, seed=1)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--test-data", str(test), *TINY,
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "macro AUROC" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["test"]["per_class"]) == set(COLOURS)
    assert m["test"]["macro_auroc"] > 0.85, m["test"]
    assert m["test"]["thresholds"] == m["val"]["thresholds"]  # chosen on validation
    assert m["test"]["threshold_from"].startswith("validation")
    assert json.loads((out / "run.json").read_text())["threshold"] == m["val"]["thresholds"]
    preds = CliRunner().invoke(main, ["vision", "predict", str(out), str(tmp_path / "test" / "img0.png"), "--json"])
    assert preds.exit_code == 0, preds.output
    got = json.loads(preds.output)[0]
    assert set(got["labels"]) <= set(COLOURS) and len(got["top"]) == 3
    ev = CliRunner().invoke(main, ["vision", "evaluate", str(out), "--data", str(test)])
    assert ev.exit_code == 0 and "subset accuracy" in ev.output and "blue" in ev.output

    from tlmulti.export import ExportedModel, export_run

    import tlmulti
    from tlmulti.runs import load_run

    _, task, _ = load_run(out)
    x, _ = task.read_inputs([str(tmp_path / "test")])
    expected = tlmulti.load_model(out).predict(np.asarray(x, np.float32), verbose=0)
    folder = export_run(out, "saved_model", tmp_path / "export")
    got = ExportedModel(folder).predict(np.asarray(x, np.float32))
    assert np.abs(got - expected).max() <= 1e-4
    assert (folder / "labels.txt").read_text().split() == sorted(COLOURS)


def test_multilabel_errors(tiny_backbone, tmp_path):
    train, _ = write_findings(tmp_path / "train", 20)
    bad = tmp_path / "train" / "bad.csv"
    bad.write_text("path,labels\nimg0.png,red\nimg1.png,\n")
    test = tmp_path / "test.csv"
    test.write_text(f"path,labels\n{tmp_path / 'train' / 'img0.png'},purple\n")
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--test-data", str(test), *TINY,
                                       "--out", str(tmp_path / "a")])
    assert result.exit_code != 0 and "label 'purple'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(tmp_path / "train"), *TINY,
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "must be a manifest" in result.output


def test_multilabel_adaptation_scores_per_label(tiny_backbone, tmp_path):
    """Sigmoid outputs: entropy, self-training and the label-free score work per label."""
    train, _ = write_findings(tmp_path / "train", 40, seed=0)
    target = tmp_path / "target"
    write_findings(target, 12, seed=2)
    (target / "findings.csv").unlink()  # a folder of unlabelled images
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), *TINY, "--adapt", "auto",
                                       "--target-data", str(target), "--set", "adaptation.epochs=1",
                                       "--set", "adaptation.candidates=[entropy, self_training, adabn]",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    a = json.loads((out / "metrics.json").read_text())["adaptation"]
    assert set(a["candidates"]) == {"none", "entropy", "self_training", "adabn"}
    assert all(0 <= a["candidates"][m]["target_entropy"] <= 1 for m in a["candidates"])
    assert "kept" in result.output and a["chosen"] in a["candidates"]
