"""Memory of domain adaptation, and the streaming it rests on.

The slow test runs every registered adaptation method on 300 source and 300 target images of
32 x 32 px fed to a 224 px network (a tiny CNN with BatchNorm) in a subprocess of its own, and
bounds the peak resident memory each method adds (VmHWM, reset before each method). Measured on
2 CPU cores, each method adds 86-164 MiB (adabn 86-92, test_time_bn 86, dann 131-164, the
others 86-93, over two runs); a statistics pass that holds the activations of all its 256
examples at once adds about 1,650 MiB here, over the bound. The fast tests check what streaming changes: BatchNorm statistics measured in one batch are the exact ones, in
small batches close to them, and a statistics call traces the model once per pass; label-free
scores summed batch by batch equal those of all predictions at once; and the float16 feature
cache is read as float32 by NumPy, so TensorFlow's oneDNN build logs no half-precision error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

#: Peak resident memory a method may add to what the process held before it (MiB); see above.
BOUND_MIB = 700
EXAMPLES = 300


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Hands memory freed so far back to the system (glibc keeps it otherwise, and a method would
    reuse what the one before it freed without raising the peak), then resets VmHWM to the
    current resident memory (Linux: writing 5 to clear_refs)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may count memory an earlier method freed
        pass
    Path("/proc/self/clear_refs").write_text("5")


def _images(root: Path, n: int, seed: int, labelled: bool) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % 2
        a = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        a[..., c] += 150
        folder = root / ("cat", "dog")[c] if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a if labelled else (a * 0.6 + 30).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def measure(work: Path) -> dict:
    """Trains the tiny CNN source-only, then runs each registered method from the source-only
    weights; returns each method's peak resident memory and what the process held before it (MiB)."""
    from tests import builders
    from tlmulti import registry
    from tlmulti.training.adaptation import adapt
    from tlmulti.training.trainer import fine_tune

    name = builders.register_tiny_cnn("tiny_cnn.memory")
    source = _images(work / "source", EXAMPLES, 0, labelled=True)
    target = _images(work / "target", EXAMPLES, 1, labelled=False)
    recipe = builders.image_recipe(
        name, source,
        data={"train": str(source), "val_split": 0.2, "batch_size": 32, "image_size": [224, 224]},
        phases=[{"name": "head", "epochs": 1, "learning_rate": 0.01},
                {"name": "ft", "epochs": 1, "learning_rate": 0.005, "unfreeze": "top:1"}],
        adaptation={"method": "adabn", "target_data": str(target), "epochs": 1})
    task, parts, train, val = builders.build_parts(recipe)
    fine_tune(parts, task, train, val, recipe)
    model = parts.assemble(augment=False)
    weights = model.get_weights()
    methods = [m for m in registry.adaptation_methods() if m not in ("none", "auto")]
    out = {"methods": {}}
    for method in methods:
        model.set_weights(weights)
        recipe.adaptation.method = method
        _reset_peak()
        before = _rss_mib("VmRSS")
        record = adapt(parts, task, train, val, recipe)
        assert method in record["candidates"] and "score" in record["candidates"][method], record
        out["methods"][method] = {"before": round(before), "peak": round(_rss_mib("VmHWM")),
                                  "added": round(_rss_mib("VmHWM") - before)}
    return out


def test_label_free_score_summed_batch_by_batch_equals_all_predictions_at_once():
    from tlmulti.training.domain import LabelFreeScore, class_prior, label_free_scores

    rng = np.random.default_rng(0)
    cases = [(rng.dirichlet(np.ones(3), size=50), rng.integers(0, 3, 40), False),  # classes
             (rng.dirichlet(np.ones(2), size=(6, 8, 8)), rng.integers(0, 2, (5, 8, 8)), False),  # pixels
             (rng.random((30, 4)), (rng.random((20, 4)) < 0.3).astype(float), True)]  # labels
    for probs, labels, sigmoid in cases:
        prior = class_prior(labels, probs.shape[-1], sigmoid)
        score = LabelFreeScore(sigmoid)
        for start in range(0, len(probs), 4):
            score.add(probs[start:start + 4])
        assert score.outputs == probs.shape[-1]
        assert score.result(prior) == label_free_scores(probs, prior, sigmoid)


def _exact_adabn(parts, target, source, prior: float = 0.0, n: float = 0.0) -> int:
    """AdaBN computed eagerly on all examples at once, in float64: every layer's source moments
    with the model as trained, then its target moments with the layers before it adapted."""
    import tensorflow as tf

    from tlmulti.training.domain import batchnorm_layers

    model = parts.assemble(backbone_training=False, augment=False)
    layers = batchnorm_layers(model)
    originals = {id(l): l.call for l in layers}
    source_moments = {}

    def moments(x, axis):
        a = np.moveaxis(np.asarray(x, np.float64), axis, -1)
        a = a.reshape(-1, a.shape[-1])
        return a.mean(0), a.var(0)

    def recording(layer):
        def call(x, *args, **kwargs):
            source_moments[id(layer)] = moments(x, layer.axis)
            return originals[id(layer)](x, training=False)
        return call

    def adapting(layer):
        def call(x, *args, **kwargs):
            (mu_s, var_s), (mu_t, var_t) = source_moments[id(layer)], moments(x, layer.axis)
            if prior:
                mu_t, var_t = (prior * mu_s + n * mu_t) / (prior + n), (prior * var_s + n * var_t) / (prior + n)
            m, v = np.array(layer.moving_mean, np.float64), np.array(layer.moving_variance, np.float64)
            eps = layer.epsilon
            new_v = np.maximum(var_t * (v + eps) / var_s - eps, 0.0)
            layer.moving_mean.assign((mu_t - np.sqrt(new_v + eps) * (mu_s - m) / np.sqrt(v + eps)).astype("float32"))
            layer.moving_variance.assign(new_v.astype("float32"))
            return originals[id(layer)](x, training=False)
        return call

    for wrap, x in ((recording, source), (adapting, target)):
        for l in layers:
            l.call = wrap(l)
        try:
            model(tf.constant(x), training=False)
        finally:
            for l in layers:
                l.call = originals[id(l)]
    return len(layers)


@pytest.fixture
def adabn_case(tiny_backbone, tmp_path):
    """The tiny CNN with BatchNorm statistics as if trained on the source (not the initial zeros
    and ones), 38 source images and their darker, lower-contrast versions as the target."""
    from tests.builders import build_parts, image_recipe, write_image_folder
    from tlmulti.training.domain import batchnorm_layers

    _, parts, train, _ = build_parts(image_recipe(tiny_backbone, write_image_folder(tmp_path / "i", per_class=25)))
    layers = batchnorm_layers(parts.assemble())
    rng = np.random.default_rng(1)
    for l in layers:
        l.moving_mean.assign(rng.normal(size=l.moving_mean.shape).astype("float32") * 0.3)
        l.moving_variance.assign(rng.uniform(0.5, 2.0, size=l.moving_variance.shape).astype("float32"))
    target = np.clip(train.x.astype(int) * 0.5 + 60, 0, 255).astype("uint8")
    assert len(train) == 38
    return parts, layers, target, train.x


def test_batchnorm_statistics_are_exact_in_one_batch_and_close_in_small_ones(adabn_case):
    """AdaBN's statistics of 38 source and 38 target images: all in one batch, those of the exact
    computation (each layer's target moments with the layers before it adapted, with and without
    the test-time-BN prior); streamed 8 at a time in random order (the target statistics of each
    batch propagating), means within 2% of a standard deviation of them and variances within
    10% (measured: 0.8% and 4%; the images are in class order, two colours, so batches that kept
    it would each hold one colour); and the number of examples is a cap (an even sample)."""
    from tlmulti.training.domain import adapt_batchnorm

    parts, layers, target, source = adabn_case
    start = parts.backbone.get_weights()

    def statistics():
        return [(np.array(l.moving_mean, np.float64), np.array(l.moving_variance, np.float64)) for l in layers]

    before = statistics()

    def adapted(adapt=adapt_batchnorm, **kwargs):
        parts.backbone.set_weights(start)
        assert adapt(parts, target, source, **kwargs) == 3
        return statistics()

    exact = adapted(_exact_adabn)
    assert all(not np.allclose(a, b) for pair_a, pair_b in zip(exact, before) for a, b in zip(pair_a, pair_b))
    for (m, v), (m_ref, v_ref) in zip(adapted(batch=64), exact):
        np.testing.assert_allclose(m, m_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v, v_ref, rtol=1e-4, atol=1e-5)
    for (m, v), (m_ref, v_ref) in zip(adapted(batch=64, prior=16.0), adapted(_exact_adabn, prior=16.0, n=64.0)):
        np.testing.assert_allclose(m, m_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v, v_ref, rtol=1e-4, atol=1e-5)
    eps = layers[0].epsilon
    for (m, v), (m_ref, v_ref) in zip(adapted(batch=8), exact):
        assert np.max(np.abs(m - m_ref) / np.sqrt(v_ref + eps)) < 0.02
        assert np.max(np.abs(np.log((v + eps) / (v_ref + eps)))) < 0.1
    fewer = adapted(batch=64, examples=10)
    assert any(not np.allclose(a, b, rtol=1e-4) for pair_a, pair_b in zip(fewer, exact) for a, b in zip(pair_a, pair_b))


def test_batchnorm_on_pooled_features_is_adapted_like_the_exact_computation():
    """A BatchNorm layer on pooled (batch, channels) features without scale or offset (the
    classification head's ``feature_norm``), after a convolutional one: each example has one
    value per channel, and the streamed statistics in one batch equal the exact ones."""
    import keras

    rng = np.random.default_rng(0)
    inputs = keras.Input((6, 8))
    x = keras.layers.BatchNormalization(name="conv_norm")(keras.layers.Conv1D(5, 3)(inputs))
    x = keras.layers.BatchNormalization(center=False, scale=False, name="feature_norm")(
        keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))

    class Parts:
        backbone = model

        def assemble(self, **kwargs):
            return model

    from tlmulti.training.domain import adapt_batchnorm, batchnorm_layers

    source = rng.normal(size=(40, 6, 8)).astype("float32")
    target = (source * 1.7 + 0.5).astype("float32")
    start = model.get_weights()
    results = []
    for adapt, kwargs in ((_exact_adabn, {}), (adapt_batchnorm, {"batch": 64})):
        model.set_weights(start)
        assert adapt(Parts(), target, source, **kwargs) == 2
        results.append([np.array(w) for l in batchnorm_layers(model) for w in (l.moving_mean, l.moving_variance)])
    assert not np.allclose(results[0][2], np.array(start[-4]))  # feature_norm's mean moved
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_batchnorm_statistics_trace_the_model_once_per_pass(adabn_case, monkeypatch):
    """A statistics call traces the forward pass once for the source and once for the target,
    however many batches (13 of 3 images) and BatchNorm layers there are."""
    from tlmulti.training.domain import adapt_batchnorm

    parts, _, target, source = adabn_case
    assemble, traces = parts.assemble, []

    def counting_assemble(*args, **kwargs):
        model = assemble(*args, **kwargs)
        call = model.call

        def counted(*a, **k):
            traces.append(1)
            return call(*a, **k)
        model.call = counted
        return model

    monkeypatch.setattr(parts, "assemble", counting_assemble)
    assert adapt_batchnorm(parts, target, source, batch=3) == 3
    assert len(traces) == 2


_HALF_SCRIPT = """
import numpy as np
from tlmulti.data.pipeline import make_dataset, make_epoch_dataset
x = np.lib.format.open_memmap(PATH, mode="w+", dtype=np.float16, shape=(20, 7, 7, 16))
x[:] = np.random.default_rng(0).normal(size=x.shape)
y = np.arange(20) % 2
for ds in (make_epoch_dataset(x, y, 8, seed=0, epochs=1), make_dataset(x, y, 8)):
    assert ds.element_spec[0].dtype.name == "float32", ds.element_spec
    got = np.concatenate([a.numpy() for a, _ in ds])
    assert got.dtype == np.float32 and np.allclose(np.sort(got.ravel()), np.sort(x.astype(np.float32).ravel()))
print("ok")
"""


def test_float16_cached_features_are_read_as_float32_without_a_half_precision_tensor(tmp_path):
    """Cached features (a float16 memmap) come out of both pipelines as float32, converted by
    NumPy in the read: with oneDNN on, a CPU without AVX-512 logs an error line for any float16
    tensor, and none is printed."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = _HALF_SCRIPT.replace("PATH", repr(str(tmp_path / "features.npy")))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert "DT_HALF" not in proc.stderr, [line for line in proc.stderr.splitlines() if "DT_HALF" in line]


@pytest.mark.slow
def test_every_adaptation_method_stays_within_a_memory_bound_at_224_px(tmp_path):
    from tlmulti import registry

    env = {**os.environ, "TLMULTI_HOME": str(tmp_path / "home"), "TLMULTI_OFFLINE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, check=False,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    methods = result["methods"]
    assert set(methods) == {m for m in registry.adaptation_methods() if m not in ("none", "auto")}
    over = {m: r for m, r in methods.items() if r["added"] > BOUND_MIB}
    assert not over, f"peak resident memory over {BOUND_MIB} MiB above the start: {over} (all: {methods})"


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]))), flush=True)
