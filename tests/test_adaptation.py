"""Domain adaptation: the losses, the label-free score, the guard, DANN on a toy shift, every method end to end."""

import json

import numpy as np
import pytest

from tests.builders import (
    assert_same_weights, build_parts, image_recipe, register_tiny_cnn, values, weights_changed, write_image_folder,
)
from tlmulti import registry
from tlmulti.evaluation import classification_metrics, grouped_accuracy
from tlmulti.tasks.base import Task


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


def test_adabn_changes_only_batchnorm_statistics_and_normalises_target_as_source(tiny_backbone, image_folder):
    import keras

    from tlmulti.training.adaptation import adapt_batchnorm

    task, parts, train, val = build_parts(image_recipe(tiny_backbone, image_folder))
    model = parts.assemble()
    bn = parts.backbone.get_layer("block1_bn")
    stats = {id(v) for l in model._flatten_layers() if l.__class__.__name__ == "BatchNormalization"
             for v in (l.moving_mean, l.moving_variance)}
    before = {id(v): np.array(v) for v in model.weights}
    # the same data as source and target: nothing moves
    assert adapt_batchnorm(parts, train.x, train.x) == 3
    for v in model.weights:
        np.testing.assert_allclose(np.array(v), before[id(v)], rtol=1e-4, atol=1e-5)
    shifted = np.clip(train.x.astype(int) * 0.5 + 60, 0, 255).astype("uint8")
    pre = keras.Model(parts.backbone.input, parts.backbone.get_layer("block1_conv").output)

    def normalised(x):
        a = pre(parts.preprocess(x) if parts.preprocess is not None else x).numpy().reshape(-1, bn.moving_mean.shape[0])
        return (a - np.array(bn.moving_mean)) / np.sqrt(np.array(bn.moving_variance) + bn.epsilon)

    source = normalised(train.x.astype("float32"))
    assert adapt_batchnorm(parts, shifted, train.x) == 3
    target = normalised(shifted.astype("float32"))
    np.testing.assert_allclose(target.mean(0), source.mean(0), atol=1e-3)
    np.testing.assert_allclose(target.std(0), source.std(0), rtol=1e-3)
    for v in model.weights:
        changed = not np.allclose(before[id(v)], np.array(v))
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


def test_mmd_zero_for_identical_batches_and_grows_with_the_shift():
    from tlmulti.training.adaptation import mmd_loss

    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 4)).astype("float32")
    b = rng.normal(size=(32, 4)).astype("float32")
    assert float(mmd_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    near, far = float(mmd_loss(a, b + 0.5)), float(mmd_loss(a, b + 3.0))
    assert 0 < near < far


def test_information_maximisation_and_pseudo_label_losses():
    from tlmulti.training.adaptation import confident_pseudo_label_loss, information_maximisation

    confident_diverse = np.array([[0.99, 0.01], [0.01, 0.99]], "float32")
    confident_collapsed = np.array([[0.99, 0.01], [0.99, 0.01]], "float32")
    uncertain = np.full((2, 2), 0.5, "float32")
    im = {k: float(information_maximisation(v)) for k, v in
          (("diverse", confident_diverse), ("collapsed", confident_collapsed), ("uncertain", uncertain))}
    assert im["diverse"] < im["collapsed"] and im["diverse"] < im["uncertain"]
    assert im["uncertain"] == pytest.approx(0.0, abs=1e-5)  # log 2 - log 2
    # only predictions at or above the threshold count: -log(0.95) / 2 for one of two rows
    probs = np.array([[0.95, 0.05], [0.6, 0.4]], "float32")
    assert float(confident_pseudo_label_loss(probs, 0.9)) == pytest.approx(-np.log(0.95) / 2, rel=1e-4)
    assert float(confident_pseudo_label_loss(probs, 0.99)) == 0.0


def test_label_free_score_ranks_the_better_model_first():
    from tlmulti.training.adaptation import class_prior, label_free_scores

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    prior = class_prior(truth, 3)
    good = np.eye(3)[truth] * 0.9 + 0.1 / 3  # right, confident, classes as in training
    collapsed = np.tile([0.9, 0.05, 0.05], (300, 1))  # confident, one class
    unsure = np.full((300, 3), 1 / 3) + rng.normal(0, 0.01, (300, 3))
    scores = {name: label_free_scores(np.clip(p, 1e-3, 1), prior)["score"]
              for name, p in (("good", good), ("collapsed", collapsed), ("unsure", unsure))}
    assert max(scores, key=scores.get) == "good"
    assert scores["good"] > scores["collapsed"] + 0.3 and scores["good"] > scores["unsure"] + 0.3
    # pixels (segmentation) and labels (multi-label) too
    masks = rng.integers(0, 2, (4, 8, 8))
    seg = label_free_scores(np.eye(2)[masks] * 0.98 + 0.01, class_prior(masks, 2))
    assert seg["score"] > label_free_scores(np.full((4, 8, 8, 2), 0.5), class_prior(masks, 2))["score"]
    multi = rng.integers(0, 2, (50, 4))
    assert label_free_scores(multi * 0.98 + 0.01, class_prior(multi, 4, True), sigmoid=True)["score"] > \
        label_free_scores(np.full((50, 4), 0.5), class_prior(multi, 4, True), sigmoid=True)["score"]


def test_select_prefers_the_best_score_never_past_the_guard_and_source_only_on_ties():
    from tlmulti.training.adaptation import select

    c = {"none": {"score": -0.30}, "dann": {"score": -0.10, "guard": "tripped"},
         "coral": {"score": -0.20, "guard": "ok"}, "adabn": {"skipped": "no BatchNorm"},
         "mmd": {"score": -0.29, "guard": "ok"}}
    assert select(c, 0.02) == "coral"
    assert select(c, 0.2) == "none"  # coral beats source-only by 0.10 only
    c["coral"]["guard"] = "tripped"
    assert select(c, 0.0) == "mmd" and select(c, 0.02) == "none"


# -- a toy two-domain problem: two moons, the target rotated by 35 degrees (Ganin et al. 2016) -----
class _ToyTask(Task):
    """A task over given arrays: no reader, no recipe (the guard's defaults come from Task)."""

    output_activation = "softmax"

    def __init__(self, target):
        self.target = target

    def compile_args(self):
        import keras

        return {"loss": keras.losses.SparseCategoricalCrossentropy(),
                "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}

    def class_weight(self, examples):
        return None

    def targets(self, examples):  # what the trainer feeds as y (Task.targets)
        return examples.y

    def read(self, ref, classes=None, labelled=True):
        return self.target


def _moons(seed, degrees):
    from sklearn.datasets import make_moons

    x, y = make_moons(400, noise=0.1, random_state=seed)
    t = np.deg2rad(degrees)
    return (x @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]).T).astype("float32"), y


def _toy(method, seed=0, **adaptation):
    """Source-only training on two moons, then ``method``; returns (target accuracy before,
    after, source val accuracy before, after, the adaptation record)."""
    import keras

    from tlmulti.data import Examples
    from tlmulti.recipe import from_dict
    from tlmulti.tasks.base import ModelParts
    from tlmulti.training.adaptation import adapt
    from tlmulti.training.trainer import fine_tune

    keras.utils.set_random_seed(seed)
    xs, ys = _moons(seed, 0)
    xt, _ = _moons(seed + 1, 35)
    xe, ye = _moons(seed + 2, 35)
    train, val = Examples(xs[:300], ys[:300], ["a", "b"]), Examples(xs[300:], ys[300:], ["a", "b"])
    inp = keras.Input((2,))
    h = keras.layers.Dense(32, activation="relu", name="g1_dense")(inp)
    backbone = keras.Model(inp, keras.layers.Dense(32, activation="relu", name="g2_dense")(h), name="mlp")
    feats = keras.Input((32,))
    head = keras.Model(feats, keras.layers.Dense(2, activation="softmax")(feats))
    parts = ModelParts(inputs=keras.Input((2,)), backbone=backbone, head=head,
                       groups={g: [backbone.get_layer(f"{g}_dense")] for g in ("g1", "g2")})
    recipe = from_dict({"name": "toy", "seed": seed, "data": {"batch_size": 32},
                        "phases": [{"name": "all", "epochs": 40, "learning_rate": 0.01, "unfreeze": "all"}],
                        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0},
                        "adaptation": {"method": method, "target_data": "toy", "epochs": 40, **adaptation}})
    task = _ToyTask(Examples(xt, None, ["a", "b"]))
    fine_tune(parts, task, train, val, recipe)

    def accuracy(x, y):
        return float((parts.assemble(augment=False).predict(x, verbose=0).argmax(1) == y).mean())

    before = accuracy(xe, ye), accuracy(val.x, val.y)
    record = adapt(parts, task, train, val, recipe)
    return before[0], accuracy(xe, ye), before[1], accuracy(val.x, val.y), record


def test_dann_on_a_toy_shift_keeps_source_accuracy_and_improves_the_target():
    target_before, target_after, source_before, source_after, record = _toy("dann", guard=0.05)
    assert source_before >= 0.97 and source_after >= source_before - 0.03
    assert target_after >= target_before + 0.05, (target_before, target_after)
    assert record["chosen"] == "dann" and record["candidates"]["dann"]["guard"] == "ok"
    assert record["candidates"]["dann"]["epochs_run"] == 40


def test_guard_puts_back_weights_when_a_method_wrecks_source_validation(capfd):
    from tlmulti import registry
    from tlmulti.training.adaptation.methods import _Training

    class Wreck(_Training):
        """Pushes every prediction towards class 0 (a method gone wrong)."""

        def target_loss(self, y_s, f_s, y_t, f_t, strength):
            from keras import ops

            return -10.0 * (ops.mean(ops.log(ops.clip(y_t[:, 0], 1e-6, 1.0))) + ops.mean(ops.log(ops.clip(y_s[:, 0], 1e-6, 1.0))))

    import sys

    sys.modules[__name__].Wreck = Wreck
    registry.register_adaptation("wreck", implementation=f"{__name__}:Wreck", replace=True)
    try:
        _, _, source_before, source_after, record = _toy("wreck", guard=0.05, schedule="constant")
    finally:
        registry._ADAPTATIONS.pop("wreck")
    c = record["candidates"]["wreck"]
    assert c["guard"] == "tripped" and c["guard_tripped_at_epoch"] <= 3
    assert min(c["source_val_by_epoch"]) < source_before - 0.05  # it did fall past the margin ...
    assert source_after >= source_before - 0.05  # ... and the weights within the margin came back
    err = capfd.readouterr().err
    assert "adaptation method 'wreck' lowered source validation accuracy" in err and "adaptation.guard 0.05" in err


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


def _adapted(tiny_backbone, image_folder, tmp_path, method, **extra):
    recipe = image_recipe(tiny_backbone, image_folder, phases=[
        {"name": "head", "epochs": 1, "learning_rate": 0.01},
        {"name": "ft", "epochs": 2, "learning_rate": 0.005, "unfreeze": "top:2"}],
        adaptation={"method": method, "target_data": str(_target_folder(tmp_path)), "weight": 1.0, "epochs": 2,
                    **extra})
    recipe.data.test = str(image_folder)
    return recipe


def _implementation(method):
    spec = registry.get_adaptation(method)
    return registry.resolve(spec.implementation) if spec.implementation else None


#: Every registered method with an implementation (a new one is tested the moment it is registered),
#: and the registered names without one (``none``, ``auto``), which run end to end.
IMPLEMENTED = [m for m in registry.adaptation_methods() if registry.get_adaptation(m).implementation]
SELECTORS = [m for m in registry.adaptation_methods() if not registry.get_adaptation(m).implementation]


def _split_weights(cnn):
    """(BatchNorm moving statistics, every other weight) of the tiny CNN, as arrays."""
    stats, other = [], []
    for layer in cnn.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            stats += [layer.moving_mean, layer.moving_variance]
            other += [layer.gamma, layer.beta]
        else:
            other += list(layer.weights)
    return values(stats), values(other)


@pytest.fixture(scope="module")
def source_only(tmp_path_factory):
    """The tiny CNN trained on the source images (head phase, then top:2), shared by the tests
    that run adaptation on it; each puts ``weights`` back first."""
    from tlmulti.training.trainer import fine_tune

    root = tmp_path_factory.mktemp("source_only")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLMULTI_HOME", str(root / "home"))
        backbone = register_tiny_cnn("tiny_cnn.adaptation")
        recipe = _adapted(backbone, write_image_folder(root / "images"), root, "auto")
        task, parts, train, val = build_parts(recipe)
        task.classes = train.classes
        fine_tune(parts, task, train, val, recipe)
        model = parts.assemble(augment=False)
        yield {"recipe": recipe, "task": task, "parts": parts, "train": train, "val": val, "model": model,
               "weights": model.get_weights()}
    registry.unregister_backbone(backbone)


def _adapt(source_only, phases=None, **adaptation):
    """``adapt`` on the source-only model with the recipe's adaptation section (and ``phases``,
    which decide the groups that train) changed; returns (record, {candidate: (all weights,
    BatchNorm statistics, other backbone weights)})."""
    import copy

    from tlmulti.training.adaptation import adapt

    s = source_only
    model, cnn = s["model"], s["parts"].backbone
    model.set_weights(s["weights"])
    recipe = copy.deepcopy(s["recipe"])
    if phases is not None:
        recipe.phases = copy.deepcopy(list(phases))
    for key, value in adaptation.items():
        setattr(recipe.adaptation, key, value)
    seen = {}

    def each(name):
        seen[name] = (values(model.weights), *_split_weights(cnn))

    record = adapt(s["parts"], s["task"], s["train"], s["val"], recipe, each=each)
    assert_same_weights(seen[record["chosen"]][0], model.weights)  # the parts are left at the kept candidate
    return record, seen


@pytest.fixture(scope="module")
def auto_stage(source_only):
    """``method: auto`` once on the source-only model: every registered method tried from the same
    weights, each candidate's weights captured."""
    return _adapt(source_only, method="auto")


@pytest.mark.parametrize("method", IMPLEMENTED)
def test_every_registered_method_adapts_the_source_only_model(method, auto_stage, source_only):
    """Each registered method runs on the tiny CNN with unlabelled target images (within ``auto``,
    from the source-only weights): a candidate row with finite scores, the guard applied, and the
    model moved the way the method moves it (BatchNorm statistics only, or trained weights)."""
    from tlmulti.training.adaptation.methods import _Statistics, _Training

    a, seen = auto_stage
    assert method in seen, f"'{method}' was not tried by auto (candidates: {', '.join(a['candidates'])})"
    c = a["candidates"][method]  # the tiny CNN has BatchNorm and a phase unfreezes top:2: every method applies
    assert c["guard"] in ("ok", "tripped") and np.isfinite(c["score"]) and 0 <= c["target_entropy"] <= 1, c
    assert 0 <= c["source_val"] <= 1 and np.isfinite(c["target_balance_kl"]) and c["seconds"] >= 0
    assert_same_weights(source_only["weights"], seen["none"][0])  # source-only scored on its own weights
    cls = _implementation(method)
    if issubclass(cls, _Statistics):  # every kernel kept; BatchNorm statistics moved unless the guard tripped
        assert_same_weights(seen["none"][2], seen[method][2])
        assert weights_changed(seen["none"][1], seen[method][1]) == (c["guard"] == "ok")
    if issubclass(cls, _Training):
        assert 1 <= c["epochs_run"] <= source_only["recipe"].adaptation.epochs
        assert len(c["source_val_by_epoch"]) == c["epochs_run"]
        if c["guard"] == "ok":
            assert weights_changed(seen["none"][0], seen[method][0])


@pytest.mark.parametrize("method", SELECTORS)
def test_the_registered_selectors_none_and_auto(method, tmp_path, request):
    """The registered names without an implementation. ``none`` trains end to end without
    adaptation (no record, no source-only model to compare with); ``auto`` tries every registered
    method, records each, and keeps the best label-free score past the guard."""
    assert method in ("none", "auto"), f"adaptation method '{method}' has no implementation: add its case here"
    if method == "none":
        from click.testing import CliRunner

        import tlmulti
        from tlmulti.cli import main
        from tlmulti.runs import SOURCE_ONLY_MODEL

        backbone, images = request.getfixturevalue("tiny_backbone"), request.getfixturevalue("image_folder")
        run = tlmulti.train(_adapted(backbone, images, tmp_path, "none"), out=tmp_path / "run")
        assert "adaptation" not in json.loads((run.dir / "metrics.json").read_text())
        assert not (run.dir / SOURCE_ONLY_MODEL).exists()
        result = CliRunner().invoke(main, ["vision", "evaluate", str(run.dir), "--data", str(images),
                                           "--compare", "source-only"])
        assert result.exit_code != 0 and "has no source_only.keras" in result.output
        return
    a, seen = request.getfixturevalue("auto_stage")
    margin = request.getfixturevalue("source_only")["recipe"].adaptation.select_margin
    assert (a["method"], a["target_examples"]) == ("auto", 8) and set(a["candidates"]) == set(seen) == {"none", *IMPLEMENTED}
    assert a["guard"]["metric"] == "accuracy" and a["guard"]["source_only"] == a["candidates"]["none"]["source_val"]
    assert a["chosen"] in a["candidates"] and a["candidates"][a["chosen"]].get("guard") != "tripped"
    best = max(c["score"] for c in a["candidates"].values() if c.get("guard") != "tripped")
    chosen = a["candidates"][a["chosen"]]["score"]
    assert chosen == best or (a["chosen"] == "none" and best <= chosen + margin)


def test_auto_skips_what_does_not_apply_and_candidates_restrict_it(source_only):
    # no phase unfreezes a group: feature alignment cannot act, entropy trains the head only
    a, _ = _adapt(source_only, phases=source_only["recipe"].phases[:1], candidates=["dann", "entropy"])
    assert set(a["candidates"]) == {"none", "dann", "entropy"}
    assert "no layer group trains" in a["candidates"]["dann"]["skipped"]
    assert a["unfrozen_groups"] == [] and "score" in a["candidates"]["entropy"]


def test_adaptation_method_without_batchnorm_fails_before_training(image_folder, tmp_path):
    import tlmulti
    from tlmulti import registry
    from tlmulti.errors import TlmultiError

    def no_bn(spec, weights, input_shape):
        import keras

        x = keras.Input(input_shape or (16, 16, 3))
        y = keras.layers.Conv2D(4, 3, name="block1_conv")(x)
        return keras.Model(x, y, name="plain")

    registry.register_backbone("plain_cnn.test", source="builder", families=("vision",), builder=no_bn,
                               input={"size": [16, 16], "channels": 3, "normalization": "unit"},
                               layer_groups={"block1": ["block1_.*"]}, description="no BatchNorm", replace=True)
    try:
        recipe = _adapted("plain_cnn.test", image_folder, tmp_path, "test_time_bn")
        with pytest.raises(TlmultiError, match="'test_time_bn' needs BatchNorm layers"):
            tlmulti.train(recipe, out=tmp_path / "run")
    finally:
        registry.unregister_backbone("plain_cnn.test")
    assert not (tmp_path / "run").exists()  # nothing trained, nothing left


def test_dann_without_an_unfreeze_phase_is_a_clear_error(tiny_backbone, image_folder, tmp_path):
    import tlmulti
    from tlmulti.errors import RecipeError

    recipe = image_recipe(tiny_backbone, image_folder,
                     adaptation={"method": "dann", "target_data": str(_target_folder(tmp_path))})
    with pytest.raises(RecipeError, match="aligns backbone features, and no phase unfreezes"):
        tlmulti.train(recipe, out=tmp_path / "run")


def test_adaptation_without_target_data_names_the_key(tiny_backbone, image_folder, tmp_path):
    import tlmulti
    from tlmulti.errors import RecipeError

    recipe = image_recipe(tiny_backbone, image_folder, adaptation={"method": "adabn"})
    with pytest.raises(RecipeError, match="adaptation.target_data"):
        tlmulti.train(recipe, out=tmp_path / "run")


def test_fashion_scanner_shift_dataset(tmp_path):
    """The other-scanner target: inverted, blurred, noisy; target and test disjoint, target unlabelled."""
    import gzip

    from PIL import Image

    from tlmulti.datasets.fashion_scanner import build

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 5).astype(np.uint8)
    x = np.zeros((50, 28, 28), np.uint8)
    x[:, 8:20, 8:20] = 220  # a bright garment on a black background
    x = np.clip(x.astype(int) + rng.integers(0, 20, x.shape), 0, 255).astype(np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * 16 + x.tobytes()))
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0" * 8 + y.tobytes()))
    build(tmp_path / "out", per_class=2, offset=1, source=src)
    target = sorted((tmp_path / "out" / "target").glob("*.png"))
    test = sorted((tmp_path / "out" / "test").rglob("*.png"))
    assert len(target) == 20 and len(test) == 20 and all(p.parent.name == "target" for p in target)
    assert {p.name for p in target}.isdisjoint({p.name for p in test})
    assert len({p.parent.name for p in test}) == 10
    a = np.asarray(Image.open(test[0])).astype(float)
    assert a[0:4, 0:4].mean() > 180 and a[12:16, 12:16].mean() < 80  # inverted: dark garment, bright ground
    assert 0 < a[0:4, 0:4].std()  # noise


def test_target_batches_do_not_move_batchnorm_moving_statistics(tiny_backbone, image_folder, tmp_path):
    """With BatchNorm layers that train, the stage's moving statistics follow source batches only."""
    import keras

    from tlmulti.training.adaptation import AdaptationModel, Entropy, pool_features

    task, parts, train, val = build_parts(image_recipe(tiny_backbone, image_folder))
    from tlmulti.training.freezing import set_trainable

    set_trainable(parts.backbone, parts.groups, ["block3"], "train")
    feats = parts.features(parts.inputs, training=None)
    joint = keras.Model(parts.inputs, [parts.head(feats), pool_features(feats)])
    method = Entropy("entropy", image_recipe(tiny_backbone, image_folder).adaptation, task)
    model = AdaptationModel(joint, method)
    model.compile(optimizer=keras.optimizers.SGD(0.0), **task.compile_args())
    bn = parts.backbone.get_layer("block3_bn")
    x = train.x[:4].astype("float32")
    dark = (x * 0.1).astype("float32")
    model.train_step(((x, train.y[:4]), dark))
    with_target = np.array(bn.moving_mean)
    bn.moving_mean.assign(np.zeros_like(with_target))
    bn.moving_variance.assign(np.ones_like(with_target))
    model.train_step(((x, train.y[:4]), x))  # same source batch, another target batch
    np.testing.assert_allclose(np.array(bn.moving_mean), with_target, rtol=1e-5, atol=1e-6)


def test_a_statistics_method_past_the_guard_keeps_the_source_only_model(tiny_backbone, image_folder, tmp_path,
                                                                        monkeypatch, capfd):
    import keras

    import tlmulti
    from tlmulti.training import adaptation

    readings = iter([0.9, 0.5])  # source-only, then the statistics re-estimated on source validation
    monkeypatch.setattr(adaptation.Stage, "source_metric", lambda self: next(readings))
    run = tlmulti.train(_adapted(tiny_backbone, image_folder, tmp_path, "adabn"), out=tmp_path / "run")
    c = run.metrics["adaptation"]["candidates"]["adabn"]
    assert c["guard"] == "tripped" and c["source_val"] == 0.5 and "tripped" not in c
    assert "lowered source validation accuracy from 0.9000 to 0.5000" in capfd.readouterr().err
    source = keras.saving.load_model(tmp_path / "run" / "source_only.keras", safe_mode=True)
    layer = lambda m: m.get_layer("tiny_cnn").get_layer("block1_bn")  # noqa: E731
    np.testing.assert_array_equal(np.array(layer(run.model).moving_mean), np.array(layer(source).moving_mean))
    # evaluate --compare source-only reads the model kept before adaptation: here the same weights
    from click.testing import CliRunner

    from tlmulti.cli import main

    result = CliRunner().invoke(main, ["vision", "evaluate", str(run.dir), "--data", str(image_folder),
                                       "--compare", "source-only", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["compare_dir"].endswith("(source-only)") and out["run"]["n"] == out["compare"]["n"] == 12
    assert out["compare"]["loss"] == pytest.approx(out["run"]["loss"], abs=1e-6)
