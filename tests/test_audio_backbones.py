"""Whisper (keras-hub, tiny random config saved as a local preset) and YAMNet-style TF-Hub
(a SavedModel made here) backbones through the speech task, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders import write_tones
from tlmulti.errors import MissingWeightsError, RecipeError


@pytest.fixture
def tones(tmp_path):
    return write_tones(tmp_path / "tones", per_class=4)


def _train(recipe_dict, out):
    import tlmulti
    from tlmulti.recipe import from_dict

    return tlmulti.train(from_dict(recipe_dict), out=out)


@pytest.fixture
def whisper_preset(tmp_path_factory):
    """A 2-layer, hidden-size-8 WhisperBackbone saved as a keras-hub preset folder."""
    import keras_hub

    from tlmulti import registry
    from tlmulti.presets.audio import whisper_groups

    path = tmp_path_factory.mktemp("whisper") / "tiny"
    model = keras_hub.models.WhisperBackbone(vocabulary_size=16, num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, num_mels=80, max_encoder_sequence_length=120,
                                             max_decoder_sequence_length=8)
    model.save_to_preset(str(path))
    registry._ensure_builtins()
    contract = dict(registry.get_backbone("whisper_tiny_en.keras_hub").input)
    registry.register_backbone("whisper_test.keras_hub", source="keras_hub", families=("audio",), handle=str(path),
                               input=contract, layer_groups=whisper_groups(2), options={"class": "WhisperBackbone"},
                               replace=True)
    yield "whisper_test.keras_hub"
    registry.unregister_backbone("whisper_test.keras_hub")


def test_whisper_encoder_trains_and_reloads(whisper_preset, tones, tmp_path):
    import tlmulti
    from tlmulti.data.audio import AudioContract, load_clip
    from tlmulti.recipe import from_dict
    from tlmulti.tasks.speech_classification import SpeechClassification

    recipe = {"task": "speech_classification", "backbone": {"name": whisper_preset},
              "data": {"train": str(tones / "manifest.csv"), "clip_seconds": 0.5, "batch_size": 4, "val_split": 0.25,
                       "augment": {"time_masks": 1, "freq_masks": 1}},
              "phases": [{"name": "head", "epochs": 1}, {"name": "top", "epochs": 1, "unfreeze": "top:2",
                                                         "learning_rate": 1e-4}],
              "output": {"plots": False}}
    task = SpeechClassification(from_dict(recipe))
    parts = task.build(["high", "low"])
    assert tuple(parts.backbone.input_shape) == (None, None, 80)
    assert parts.backbone.output.shape[-1] == 8
    assert list(parts.groups) == ["conv_stem", "layer0", "layer1", "final_norm"]
    assert [layer.name for layer in parts.groups["final_norm"]] == ["encoder_layer_norm"]
    assert not any("decoder" in layer.name for layer in parts.backbone.layers)

    run = _train(recipe, tmp_path / "run")
    phases = run.metrics["phases"]
    assert phases[0]["feature_cache"] and phases[1]["unfrozen_groups"] == ["layer1", "final_norm"]
    model = tlmulti.load_model(run.dir)
    x = load_clip(tones / "low" / "low_2.wav", AudioContract(clip_seconds=0.5))
    np.testing.assert_allclose(model.predict(x[None], verbose=0), run.model.predict(x[None], verbose=0), rtol=1e-5)
    preds = tlmulti.predict(run.dir, [str(tones / "low" / "low_2.wav")])
    assert preds[0]["top"][0]["probability"] == pytest.approx(float(model.predict(x[None], verbose=0).max()), rel=1e-4)


def test_whisper_clip_longer_than_encoder_is_an_error(whisper_preset):
    from tlmulti.recipe import from_dict
    from tlmulti.tasks.speech_classification import SpeechClassification

    task = SpeechClassification(from_dict({"task": "speech_classification", "backbone": {"name": whisper_preset},
                                           "data": {"clip_seconds": 2.0}}))
    with pytest.raises(RecipeError, match="clip_seconds.*200 log-mel frames.*at most 120"):
        task.build(["a", "b"])


def test_whisper_and_yamnet_presets_need_downloads_offline():
    from tlmulti import registry
    from tlmulti.backbones import load_backbone, weights_status

    for name in ("whisper_tiny_en.keras_hub", "yamnet.tfhub"):
        spec = registry.get_backbone(name)
        assert weights_status(spec)[0] is False
        with pytest.raises(MissingWeightsError, match=name.split(".")[0].split("_")[0]):
            load_backbone(spec, input_shape=(16000,))


@pytest.fixture
def yamnet_like(tmp_path_factory):
    """A SavedModel with YAMNet's contract: one unbatched waveform in, (scores, embeddings, spectrogram) out."""
    import tensorflow as tf

    from tlmulti import registry

    class FakeYamnet(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.kernel = tf.Variable(rng.normal(size=(81, 8)).astype("float32") * 0.1, name="embed/kernel")
            self.classifier = tf.Variable(rng.normal(size=(8, 3)).astype("float32"), name="logits/kernel")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, waveform):
            n = tf.shape(waveform)[0] // 160
            frames = tf.reshape(waveform[: n * 160], (n, 160))
            spectrum = tf.abs(tf.signal.rfft(frames))
            embeddings = tf.nn.relu(tf.matmul(spectrum, self.kernel))
            return tf.nn.sigmoid(tf.matmul(embeddings, self.classifier)), embeddings, spectrum

    path = tmp_path_factory.mktemp("hub") / "yamnet_like"
    tf.saved_model.save(FakeYamnet(), str(path))
    registry._ensure_builtins()
    real = registry.get_backbone("yamnet.tfhub")
    registry.register_backbone("yamnet_test.tfhub", source="tfhub", families=("audio",), handle=str(path),
                               builder=real.builder, input=dict(real.input), layer_groups={"all": ["hub"]},
                               options=dict(real.options), replace=True)
    yield "yamnet_test.tfhub"
    registry.unregister_backbone("yamnet_test.tfhub")


def test_yamnet_style_hub_backbone_trains_fine_tunes_and_reloads(yamnet_like, tones, tmp_path):
    import tlmulti
    from tlmulti.data.audio import AudioContract, load_clip

    recipe = {"task": "speech_classification", "backbone": {"name": yamnet_like},
              "data": {"train": str(tones / "manifest.csv"), "clip_seconds": 0.5, "batch_size": 4, "val_split": 0.25,
                       "augment": {"gain_db": 3, "time_masks": 2}},
              "phases": [{"name": "head", "epochs": 2, "learning_rate": 1e-2},
                         {"name": "all", "epochs": 1, "unfreeze": "all", "learning_rate": 1e-2}],
              "output": {"plots": False}}
    run = _train(recipe, tmp_path / "run")
    hub = run.model.get_layer("backbone").get_layer("hub")
    before = json.loads((tmp_path / "run" / "metrics.json").read_text())["phases"]
    assert before[0]["feature_cache"] and before[1]["trainable_params"] > 8 * 2 + 2
    kernel = [w for w in hub.weights if "embed" in w.name][0]
    assert not np.allclose(np.asarray(kernel), np.random.default_rng(0).normal(size=(81, 8)).astype("float32") * 0.1)
    model = tlmulti.load_model(run.dir)
    x = load_clip(tones / "high" / "high_1.wav", AudioContract(clip_seconds=0.5))[None]
    assert run.model.get_layer("backbone").output.shape[-1] == 8
    np.testing.assert_allclose(model.predict(x, verbose=0), run.model.predict(x, verbose=0), rtol=1e-5)
