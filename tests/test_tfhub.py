"""HubLayer / build_tfhub_backbone on small SavedModels written to tmp_path (offline)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tlmulti.backbones.tfhub import build_tfhub_backbone  # noqa: E402
from tlmulti.layers.hub import HubLayer  # noqa: E402
from tlmulti.errors import MissingWeightsError  # noqa: E402

IN_DIM, OUT_DIM = 3, 4


class TinyDense(tf.Module):
    """``scale * (x @ kernel + bias)``; kernel/bias trainable, scale not."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(
            rng.normal(size=(IN_DIM, OUT_DIM)).astype("float32"), name="dense/kernel"
        )
        self.bias = tf.Variable(np.full((OUT_DIM,), 0.1, "float32"), name="dense/bias")
        self.scale = tf.Variable(1.5, trainable=False, name="scale")

    @tf.function(input_signature=[tf.TensorSpec([None, IN_DIM], tf.float32)])
    def __call__(self, x, training=False):
        y = tf.matmul(x, self.kernel) + self.bias
        if training:
            y = y + 100.0
        return y * self.scale


def _x(n=8, seed=1):
    return np.random.default_rng(seed).normal(size=(n, IN_DIM)).astype("float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "tiny"
    module = TinyDense()
    tf.saved_model.save(module, str(path))
    return str(path), module


def _hub_values(layer):
    return {w.name: np.array(w.numpy()) for w in layer.weights}


def _model_with_head(path, trainable):
    backbone = build_tfhub_backbone(path, input_shape=(IN_DIM,), trainable=trainable)
    inputs = keras.Input((IN_DIM,))
    outputs = keras.layers.Dense(1, name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model, backbone.get_layer("hub")


def _fit_one_epoch(model):
    x = _x(32, seed=2)
    y = np.random.default_rng(3).normal(size=(32, 1)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_forward_matches_module(saved):
    path, module = saved
    backbone = build_tfhub_backbone(path, input_shape=(IN_DIM,))
    assert backbone.name == "backbone"
    assert isinstance(backbone.get_layer("hub"), HubLayer)
    assert backbone.output.shape == (None, OUT_DIM)
    x = _x()
    expected = module(tf.constant(x)).numpy()
    np.testing.assert_allclose(backbone(x).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(backbone.predict(x, verbose=0), expected, rtol=1e-6)


def test_frozen_weights_not_trained(saved):
    path, _ = saved
    model, hub = _model_with_head(path, trainable=False)
    assert hub.trainable_weights == []
    assert sorted(w.name for w in hub.non_trainable_weights) == [
        "dense_bias",
        "dense_kernel",
        "scale",
    ]
    before = _hub_values(hub)
    head_before = model.get_layer("head").get_weights()[0].copy()
    _fit_one_epoch(model)
    for name, value in _hub_values(hub).items():
        np.testing.assert_array_equal(value, before[name])
    assert not np.allclose(model.get_layer("head").get_weights()[0], head_before)


def test_unfrozen_weights_trained(saved):
    path, _ = saved
    model, hub = _model_with_head(path, trainable=True)
    assert sorted(w.name for w in hub.trainable_weights) == ["dense_bias", "dense_kernel"]
    assert [w.name for w in hub.non_trainable_weights] == ["scale"]
    before = _hub_values(hub)
    _fit_one_epoch(model)
    after = _hub_values(hub)
    assert not np.allclose(after["dense_kernel"], before["dense_kernel"])
    assert not np.allclose(after["dense_bias"], before["dense_bias"])
    np.testing.assert_array_equal(after["scale"], before["scale"])
    # The keras variables are the SavedModel's variables, not copies.
    np.testing.assert_array_equal(hub._hub_module.kernel.numpy(), after["dense_kernel"])

    # Freezing again moves them to non_trainable_weights.
    hub.trainable = False
    assert hub.trainable_weights == []
    assert len(hub.non_trainable_weights) == 3
    hub.trainable = True
    assert sorted(w.name for w in hub.trainable_weights) == ["dense_bias", "dense_kernel"]


def test_save_load_roundtrip_keeps_finetuned_values(saved, tmp_path):
    path, module = saved
    model, hub = _model_with_head(path, trainable=True)
    _fit_one_epoch(model)
    tuned = _hub_values(hub)
    assert not np.allclose(tuned["dense_kernel"], module.kernel.numpy())
    x = _x()
    expected = model.predict(x, verbose=0)

    file = tmp_path / "x.keras"
    model.save(file)
    import tlmulti.layers.hub  # noqa: F401  (registers HubLayer)

    from tlmulti.backbones._saved_model import trusting_saved_models

    with trusting_saved_models():  # a SavedModel outside the registry: loaded only when trusted
        loaded = keras.saving.load_model(file)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    hub2 = loaded.get_layer("backbone").get_layer("hub")
    assert hub2 is not hub and hub2.trainable
    for name, value in _hub_values(hub2).items():
        np.testing.assert_allclose(value, tuned[name], rtol=1e-6)
    config = hub2.get_config()
    assert config["handle"] == path
    assert config["signature"] is None and config["output_key"] is None
    assert config["arguments"] == {} and config["trainable"] is True


def test_missing_local_path(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(MissingWeightsError, match="no_such_model") as info:
        HubLayer(missing)
    assert "tlmulti weights import" in str(info.value)


def test_url_offline_names_cache_and_ways_out(monkeypatch, tmp_path):
    import tensorflow_hub as hub

    def offline(handle):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub, "resolve", offline)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    handle = "https://tfhub.dev/google/some-model/1"
    with pytest.raises(MissingWeightsError) as info:
        HubLayer(handle)
    message = str(info.value)
    assert handle in message and str(tmp_path / "cache") in message
    assert "local SavedModel directory" in message and "tlmulti weights import" in message


def test_signature_with_output_key(tmp_path):
    module = TinyDense()

    @tf.function(input_signature=[tf.TensorSpec([None, IN_DIM], tf.float32, name="pixels")])
    def serve(pixels):
        return {"features": module(pixels), "logits": tf.reduce_sum(module(pixels), -1)}

    path = str(tmp_path / "sig")
    tf.saved_model.save(module, path, signatures={"feature_vector": serve})
    backbone = build_tfhub_backbone(
        path, input_shape=(IN_DIM,), signature="feature_vector", output_key="features"
    )
    x = _x()
    np.testing.assert_allclose(backbone(x).numpy(), module(tf.constant(x)).numpy(), rtol=1e-6)
    logits = build_tfhub_backbone(
        path, input_shape=(IN_DIM,), signature="feature_vector", output_key="logits"
    )
    assert logits.output.shape == (None,)
    np.testing.assert_allclose(
        logits(x).numpy(), module(tf.constant(x)).numpy().sum(-1), rtol=1e-5
    )


def test_training_flag_passed_when_traced(tmp_path):
    """A SavedModel traced for training=True/False gets the flag, but only when trainable."""

    class WithTraining(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.ones((IN_DIM, OUT_DIM)))

        @tf.function
        def __call__(self, x, training=False):
            y = tf.matmul(x, self.kernel)
            return y + 10.0 if training else y

    module = WithTraining()
    spec = tf.TensorSpec([None, IN_DIM], tf.float32)
    for flag in (True, False):
        module.__call__.get_concrete_function(spec, training=flag)
    path = str(tmp_path / "train")
    tf.saved_model.save(module, path)
    x = _x()
    base = module(tf.constant(x)).numpy()
    trainable = HubLayer(path, trainable=True)
    np.testing.assert_allclose(trainable(x, training=True).numpy(), base + 10.0, rtol=1e-6)
    np.testing.assert_allclose(trainable(x, training=False).numpy(), base, rtol=1e-6)
    frozen = HubLayer(path, trainable=False)
    np.testing.assert_allclose(frozen(x, training=True).numpy(), base, rtol=1e-6)
