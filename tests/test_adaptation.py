"""Domain adaptation in the shared trainer: gradient reversal, CORAL, AdaBN, end-to-end runs."""

import json

import numpy as np
import pytest

from tests.conftest import write_image_folder
from tests.test_training import _build, _recipe
from tlmulti.evaluation import classification_metrics, grouped_accuracy


def test_gradient_reversal_flips_and_scales_the_gradient():
    import tensorflow as tf

    from tlmulti.training.adaptation import GradientReversal

    layer = GradientReversal(0.5)
    x = tf.constant([[1.0, 2.0, 3.0]])
    w = tf.constant([[2.0, -1.0, 4.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * w)
    np.testing.assert_allclose(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), -0.5 * w.numpy())


def test_coral_loss_zero_for_identical_batches_positive_otherwise():
    from tlmulti.training.adaptation import coral_loss

    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 6)).astype("float32")
    assert float(coral_loss(a, a)) == pytest.approx(0.0, abs=1e-7)
    b = a * np.array([1, 1, 3, 1, 1, 0.2], "float32")
    assert float(coral_loss(a, b)) > 0.01
    # hand-computed value: covariance difference over 4 d^2
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert float(coral_loss(a, b)) == pytest.approx(((ca - cb) ** 2).sum() / (4 * 36), rel=1e-4)


def test_ramp_schedule():
    from tlmulti.training.adaptation import ramp

    assert ramp(0.0) == 0.0 and ramp(1.0) == pytest.approx(0.9999, abs=1e-3) and 0.4 < ramp(0.1) < 0.5


def test_adabn_changes_only_batchnorm_moving_statistics(tiny_backbone, image_folder):
    from tlmulti.training.adaptation import adapt_batchnorm

    task, parts, train, val = _build(_recipe(tiny_backbone, image_folder))
    model = parts.assemble()
    stats = {id(v) for l in model._flatten_layers() if l.__class__.__name__ == "BatchNormalization"
             for v in (l.moving_mean, l.moving_variance)}
    before = {id(v): np.array(v) for v in model.weights}
    shifted = np.clip(train.x.astype(int) * 0.5 + 60, 0, 255).astype("uint8")
    assert adapt_batchnorm(parts, shifted, batch_size=4) == 3
    for v in model.weights:
        changed = not np.array_equal(before[id(v)], np.array(v))
        assert changed == (id(v) in stats), v.path


def test_grouped_metrics_match_a_hand_count():
    y = np.array([0, 1, 1, 0, 1, 0])
    pred = np.array([0, 1, 0, 0, 0, 1])
    groups = ["a", "a", "b", "b", "c", "c"]
    out = grouped_accuracy(y, pred, groups, "domain")
    assert out["by_group"] == {"a": {"accuracy": 1.0, "n": 2}, "b": {"accuracy": 0.5, "n": 2},
                               "c": {"accuracy": 0.0, "n": 2}}
    assert out["worst_group"] == {"group": "c", "accuracy": 0.0}
    probs = np.eye(2)[pred] * 0.8 + 0.1
    full = classification_metrics(y, probs, ["x", "y"], ("domain", groups))
    assert full["accuracy"] == pytest.approx(0.5) and full["by_group"]["b"]["accuracy"] == 0.5


def _target_folder(tmp_path):
    """Unlabelled target images: the same classes, darker and lower contrast, no class folders."""
    root = write_image_folder(tmp_path / "target_src", per_class=4, seed=3)
    flat = tmp_path / "target"
    flat.mkdir()
    from PIL import Image

    for i, p in enumerate(sorted(root.rglob("*.png"))):
        a = np.asarray(Image.open(p)).astype(float) * 0.6 + 30
        Image.fromarray(a.astype("uint8")).save(flat / f"t{i}.png")
    return flat


@pytest.mark.parametrize("method", ["adabn", "dann", "coral"])
def test_end_to_end_adaptation(method, tiny_backbone, image_folder, tmp_path):
    import tlmulti

    recipe = _recipe(tiny_backbone, image_folder, phases=[
        {"name": "head", "epochs": 1, "learning_rate": 0.01},
        {"name": "ft", "epochs": 2, "learning_rate": 0.005, "unfreeze": "top:2"}],
        adaptation={"method": method, "target_data": str(_target_folder(tmp_path)), "weight": 1.0})
    recipe.data.test = str(image_folder)
    run = tlmulti.train(recipe, out=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["adaptation"] == {"method": method, "weight": 1.0, "target_examples": 8}
    if method in ("dann", "coral"):
        import csv

        rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
        losses = [float(r[f"{method}_loss"]) for r in rows if r.get(f"{method}_loss")]
        assert losses and all(np.isfinite(losses)) and max(losses) > 0  # the alignment loss was trained
        return
    # AdaBN: against the same run without adaptation, block1 (never trained: not in top:2) has the
    # same kernel, and its BatchNorm statistics were re-estimated on the target images
    recipe.adaptation.method = "none"
    plain = tlmulti.train(recipe, out=tmp_path / "plain")
    layer = lambda m, name: m.get_layer("tiny_cnn").get_layer(name)  # noqa: E731
    np.testing.assert_array_equal(np.array(layer(run.model, "block1_conv").kernel),
                                  np.array(layer(plain.model, "block1_conv").kernel))
    assert not np.allclose(np.array(layer(run.model, "block1_bn").moving_mean),
                           np.array(layer(plain.model, "block1_bn").moving_mean))


def test_dann_without_an_unfreeze_phase_is_a_clear_error(tiny_backbone, image_folder, tmp_path):
    import tlmulti
    from tlmulti.errors import RecipeError

    recipe = _recipe(tiny_backbone, image_folder,
                     adaptation={"method": "dann", "target_data": str(_target_folder(tmp_path))})
    with pytest.raises(RecipeError, match="no phase unfreezes"):
        tlmulti.train(recipe, out=tmp_path / "run")


def test_adaptation_without_target_data_names_the_key(tiny_backbone, image_folder, tmp_path):
    import tlmulti
    from tlmulti.errors import RecipeError

    recipe = _recipe(tiny_backbone, image_folder, adaptation={"method": "adabn"})
    with pytest.raises(RecipeError, match="adaptation.target_data"):
        tlmulti.train(recipe, out=tmp_path / "run")
