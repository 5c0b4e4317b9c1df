"""The classic baseline of a segmentation run: per-pixel Gaussian classes (scikit-learn's quadratic
discriminant) on intensity and its blur, scored with the model's own Dice on stitched images."""

from __future__ import annotations

import numpy as np
import pytest

import tlmulti
from tests.builders import seg_recipe, write_seg_folder


@pytest.fixture
def seg_data(tmp_path):
    return {split: write_seg_folder(tmp_path / split, n, seed=k)
            for k, (split, n) in enumerate((("train", 4), ("val", 2), ("test", 2)))}


def test_the_baseline_equals_a_scikit_learn_fit_and_sits_beside_the_model(tiny_backbone, seg_data, tmp_path):
    from scipy.ndimage import gaussian_filter
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    from tlmulti.tasks import make_task

    recipe = seg_recipe(tiny_backbone, seg_data)
    run = tlmulti.train(recipe, out=tmp_path / "run")
    baseline = run.metrics["baseline"]
    assert baseline["method"].startswith("per-pixel Gaussian classes")
    assert set(baseline["test"]) >= {"mean_dice", "mean_iou", "per_class"}

    task = make_task(recipe)
    train, val, test = task.load_splits()

    def features(x):
        x = np.asarray(x, np.float32) / 255.0
        return np.concatenate([x, gaussian_filter(x, sigma=(0, 2, 2, 0), mode="reflect")], axis=-1)

    f, y = features(train.x), np.asarray(train.y)
    assert f[..., 0].size <= 200_000  # every training pixel is used on data this small
    qda = QuadraticDiscriminantAnalysis(reg_param=1e-3).fit(f.reshape(-1, f.shape[-1]), y.reshape(-1))
    for name, examples in (("val", val), ("test", test)):
        g = features(examples.x)
        probs = qda.predict_proba(g.reshape(-1, g.shape[-1])).reshape(*g.shape[:-1], -1)
        expected = task.metrics_from(probs, examples)
        assert baseline[name]["mean_dice"] == pytest.approx(expected["mean_dice"], abs=1e-6)
        assert baseline[name]["per_class"]["nucleus"]["dice"] == pytest.approx(
            expected["per_class"]["nucleus"]["dice"], abs=1e-6)


def test_bright_discs_are_a_case_for_the_baseline_and_the_run_says_so(tiny_backbone, seg_data, tmp_path, capfd):
    recipe = seg_recipe(tiny_backbone, seg_data, **{"phases.0.epochs": 1, "phases.1.epochs": 0,
                                                     "phases.0.learning_rate": 1e-5})
    run = tlmulti.train(recipe, out=tmp_path / "run")
    base, model = run.metrics["baseline"]["val"]["mean_dice"], run.metrics["val"]["mean_dice"]
    assert base > 0.8 > model  # intensity is the answer here; one epoch at a tiny rate is not
    err = capfd.readouterr().err
    assert "the classic baseline (per-pixel Gaussian classes" in err and "mean_dice" in err


def test_the_baseline_can_be_turned_off(tiny_backbone, seg_data, tmp_path):
    recipe = seg_recipe(tiny_backbone, seg_data, baseline="false")
    run = tlmulti.train(recipe, out=tmp_path / "run")
    assert "baseline" not in run.metrics
