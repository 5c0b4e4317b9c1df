"""Speech classification end to end: train / evaluate / predict through the CLI, CLI errors,
and source pretraining saved as a named backbone (tiny tone data, offline)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.builders import write_tones


@pytest.fixture
def tones(tmp_path):
    return write_tones(tmp_path / "tones")


# ---------------------------------------------------------------------------------------------
# End to end through the CLI


def _cli(*args):
    from click.testing import CliRunner

    from tlmulti.cli import main

    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def test_train_evaluate_predict_end_to_end(tones, tmp_path):
    import tlmulti

    out = tmp_path / "run"
    r = _cli("audio", "train", "--data", tones / "manifest.csv", "--backbone", "audio_cnn.scratch",
             "--holdout", "accent=c", "--epochs", "1", "--set", "data.clip_seconds=0.5",
             "--set", "data.augment.speed=0.05", "--set", "data.augment.time_masks=1",
             "--set", "data.group_column=accent", "--set", "data.val_split=0.25", "--out", out)
    assert r.exit_code == 0, r.output
    assert "worst accent 'c'" in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["test"] == 4 and set(metrics["test"]["by_group"]) == {"c"}
    assert set(metrics["test"]["groups"]) == {"accent", "speaker"}
    saved = (out / "recipe.yaml").read_text()
    for line in ("sample_rate: 16000", "clip_seconds: 0.5", "n_mels: 40", "hop_length: 160", "normalize: utterance",
                 "- accent=c"):
        assert line in saved  # the preprocessing is stated in the run's recipe

    r = _cli("audio", "evaluate", out, "--data", tones / "manifest.csv", "--group-by", "speaker", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["n"] == 12 and set(m["by_group"]) == {"spk0", "spk1", "spk2"}
    hand = {}
    for s in ("spk0", "spk1", "spk2"):
        hand[s] = m["by_group"][s]["n"]
    assert hand == {"spk0": 4, "spk1": 4, "spk2": 4}

    r = _cli("audio", "predict", out, tones / "high" / "high_1.wav", tones / "low", "--json")
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)
    assert len(preds) == 7 and {t["label"] for t in preds[0]["top"]} == {"low", "high"}

    model = tlmulti.load_model(out)  # raw waveforms in, probabilities out
    from tlmulti.data.audio import AudioContract, load_clip

    x = load_clip(tones / "high" / "high_1.wav", AudioContract(clip_seconds=0.5))
    np.testing.assert_allclose(model.predict(x[None], verbose=0)[0],
                               [t["probability"] for t in sorted(preds[0]["top"], key=lambda t: t["label"] != "high")],
                               rtol=1e-4)


def test_cli_errors_are_one_line(tones, tmp_path):
    r = _cli("audio", "train", "--data", tones / "manifest.csv", "--backbone", "audio_cnn.scratch",
             "--holdout", "accent", "--out", tmp_path / "r1")
    assert r.exit_code == 2 and "COLUMN=VALUE" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad"
    (bad / "yes").mkdir(parents=True)
    (bad / "no").mkdir()
    (bad / "yes" / "broken.wav").write_bytes(b"")
    shutil.copy(tones / "low" / "low_1.wav", bad / "no" / "fine.wav")
    r = _cli("audio", "train", "--data", bad, "--backbone", "audio_cnn.scratch", "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "broken.wav" in r.output and not (tmp_path / "r2").exists()
    r = _cli("audio", "train", "--data", tones / "manifest.csv", "--backbone", "audio_cnn.scratch",
             "--set", "data.features.n_mels=0x", "--out", tmp_path / "r3")
    assert r.exit_code == 2 and "data.features.n_mels" in r.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = _cli("audio", "synth", "--words", "yes", "--out", tmp_path / "full")
    assert r.exit_code == 2 and "not empty" in r.output


def test_audio_help_lists_commands():
    r = _cli("audio", "--help")
    assert r.exit_code == 0
    for name in ("train", "evaluate", "predict", "synth", "pretrain"):
        assert name in r.output
    for name in ("train", "evaluate", "predict", "synth", "pretrain"):
        assert _cli("audio", name, "--help").exit_code == 0
    assert "--holdout" in _cli("audio", "train", "--help").output


def test_pretrain_saves_named_backbone_the_registry_offers(tones, tmp_path, tlmulti_home):
    from tlmulti import registry

    r = _cli("audio", "pretrain", "--data", tones / "manifest.csv", "--name", "tones_cnn.test", "--epochs", "1",
             "--set", "data.clip_seconds=0.5", "--set", "data.batch_size=8", "--out", tmp_path / "src")
    assert r.exit_code == 0, r.output
    saved = tlmulti_home / "backbones" / "tones_cnn.test"
    assert (saved / "backbone.keras").is_file()
    meta = json.loads((saved / "backbone.json").read_text())
    assert meta["families"] == ["audio"] and meta["input"]["n_mels"] == 40 and "block4" in meta["layer_groups"]
    spec = registry.get_backbone("tones_cnn.test")
    assert spec.source == "local"
    r = _cli("audio", "pretrain", "--data", tones / "manifest.csv", "--name", "tones_cnn.test", "--epochs", "1")
    assert r.exit_code == 2 and "already exists" in r.output
    # the registry offers it by name: a task on it loads the saved weights
    import keras

    from tlmulti.recipe import from_dict
    from tlmulti.tasks.speech_classification import SpeechClassification

    task = SpeechClassification(from_dict({"task": "speech_classification", "backbone": {"name": "tones_cnn.test"},
                                           "data": {"clip_seconds": 0.5}}))
    parts = task.build(["high", "low"])
    saved_model = keras.saving.load_model(saved / "backbone.keras", compile=False)
    np.testing.assert_array_equal(parts.backbone.get_layer("block3_conv").get_weights()[0],
                                  saved_model.get_layer("block3_conv").get_weights()[0])
    assert list(parts.groups) == ["block1", "block2", "block3", "block4"]
    registry.unregister_backbone("tones_cnn.test")


def test_source_backbone_is_built_once_before_the_run_and_loaded_after(tones, tlmulti_home, monkeypatch):
    from tlmulti import registry
    from tlmulti.architectures.audio_cnn import audio_cnn
    from tlmulti.backbones import load_backbone, weights_status
    from tlmulti.backbones.source_pretrained import saved_path
    from tlmulti.errors import MissingWeightsError
    from tlmulti.training import pretrain as pt

    spec = registry.register_backbone(
        "first_use.test", source="source_pretrained", families=("audio",), input={"n_mels": 40},
        layer_groups={"block1": ["block1_.*"]}, replace=True,
        options={"recipe": "audio/source_pretrain.yaml",
                 "architecture": "tlmulti.architectures.audio_cnn:build_audio_cnn"})
    with pytest.raises(MissingWeightsError, match="tlmulti audio pretrain --name first_use.test"):
        load_backbone(spec, input_shape=(51, 40))  # a loader only loads: it never trains
    calls = []

    def fake_pretrain(recipe, name, **kw):  # what pretrain leaves behind, without the training
        from tlmulti.backbones.local import save_backbone

        calls.append((name, recipe.backbone.name, recipe.data.train))
        save_backbone(audio_cnn(40), name, families=("audio",), overwrite=True)

    monkeypatch.setattr(pt, "pretrain", fake_pretrain)
    pt.ensure_source_backbone(spec)
    assert calls == [("first_use.test", "audio_cnn.scratch", "dataset:speech-words-synth/train")]
    assert weights_status(spec)[0] and saved_path(spec).is_file()
    pt.ensure_source_backbone(spec)
    assert len(calls) == 1  # built once
    assert registry.get_backbone("first_use.test").source == "source_pretrained"
    loaded = load_backbone(spec, input_shape=(51, 40))
    fresh = load_backbone(spec, weights="random", input_shape=(51, 40))
    import keras

    w_loaded = loaded.get_layer("block1_conv").get_weights()[0]
    w_saved = keras.saving.load_model(saved_path(spec), compile=False).get_layer("block1_conv").get_weights()[0]
    np.testing.assert_array_equal(w_loaded, w_saved)  # loaded from the saved file, not retrained
    assert not np.allclose(w_loaded, fresh.get_layer("block1_conv").get_weights()[0])
    registry.unregister_backbone("first_use.test")


def test_bundled_audio_recipes_validate():
    from tlmulti.recipe import load_recipe, recipes_dir

    files = sorted((recipes_dir() / "audio").glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        recipe = load_recipe(path)
        assert recipe.task == "speech_classification"
    default = load_recipe(task="speech_classification")
    assert default.data.clip_seconds == "auto" and default.backbone.name == "whisper_tiny_en.bundled"
