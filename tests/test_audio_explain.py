"""Time-frequency saliency of speech runs: ``audio predict --explain DIR``.

One tiny run (the 2-block log-mel CNN, 16 mel bands) is trained for the module on half-second
clips of white noise; ``beep`` clips also hold a 1 kHz tone in their second half only, ``noise``
clips nothing else. What tells a beep is in one mel band and one half of the clip, so the map of
a correctly classified beep must be densest there (an averaging CNN spreads some gradient over
the whole clip, so the test asks for density and the map's top cells, not for most of its mass).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.builders import register_tiny_audio_cnn

RATE, SECONDS, TONE = 16000, 0.5, 1000.0


def _write_beeps(root, per_class, seed):
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(RATE * SECONDS)
    for label in ("beep", "noise"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            wave = rng.normal(0, 0.05, n)
            if label == "beep":
                t = np.arange(n - n // 2) / RATE
                wave[n // 2:] += 0.4 * np.sin(2 * np.pi * TONE * rng.uniform(0.95, 1.05) * t + rng.uniform(0, 6))
            sf.write(root / label / f"{label}_{i}.wav", wave.astype("float32"), RATE)
    return root


@pytest.fixture(scope="module")
def beep_run(tmp_path_factory):
    from tlmulti import registry
    from tlmulti.recipe import from_dict
    from tlmulti.training import train

    root = tmp_path_factory.mktemp("audio_explain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLMULTI_HOME", str(root / "home"))
        name = register_tiny_audio_cnn("tiny_audio_cnn.explain")
        try:
            test = _write_beeps(root / "test", 8, seed=1)
            recipe = from_dict({
                "task": "speech_classification", "name": "beeps", "seed": 0,
                "backbone": {"name": name}, "head": {"pooling": "avg", "dropout": 0.0},
                "data": {"train": str(_write_beeps(root / "train", 16, seed=0)), "test": str(test),
                         "val_split": 0.25, "batch_size": 8, "clip_seconds": SECONDS, "trim_silence": False,
                         "features": {"normalize": "global"}},
                "phases": [{"name": "head", "epochs": 4, "learning_rate": 0.05},
                           {"name": "all", "epochs": 16, "learning_rate": 0.02, "unfreeze": "all",
                            "batchnorm": "train"}],
                "callbacks": {"verbose": 0, "early_stopping": {"enabled": False}},
                "output": {"plots": False},
            })
            run = train(recipe, out=root / "run")
            yield {"run": run, "test": test}
        finally:
            registry.unregister_backbone(name)


def _predict(*args):
    from tlmulti.cli import main

    return CliRunner().invoke(main, ["audio", "predict", *map(str, args)], catch_exceptions=False)


def test_saliency_of_a_beep_sits_on_its_band_and_half(beep_run):
    from tlmulti.evaluation.mel_saliency import MelSaliency
    from tlmulti.runs import load_run

    _, task, model = load_run(beep_run["run"].dir)
    files = sorted((beep_run["test"] / "beep").glob("*.wav"))
    x, _ = task.read_inputs([str(f) for f in files])
    maps, mels, classes = MelSaliency(model, task.spec.name)(x)
    c = task.contract()
    assert maps.shape == mels.shape == (len(files), c.frames, c.n_mels)
    assert maps.dtype == np.float32 and maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    right = [k for k in range(len(files)) if task.classes[classes[k]] == "beep"]
    assert len(right) >= 6, f"the tiny model should hear the beeps: {len(right)}/{len(files)}"
    half = c.frames // 2
    for k in right:
        tone_band = int(mels[k, half + 2:].mean(axis=0).argmax())  # the loudest band where the tone plays
        region = np.zeros(maps[k].shape, bool)  # second half, within one band of the tone's: 9% of the cells
        region[half:, max(tone_band - 1, 0):tone_band + 2] = True
        density = maps[k][region].mean() / maps[k][~region].mean()
        top = maps[k] >= np.quantile(maps[k], 0.95)
        assert density > 2.5, f"clip {k}: saliency only {density:.1f}x as dense where the tone is as elsewhere"
        assert (top & region).sum() > 0.3 * top.sum(), f"clip {k}: the top 5% of the map miss the tone"
        assert abs(int(maps[k].sum(axis=0).argmax()) - tone_band) <= 1, f"clip {k}: the map's band is not the tone's"
        assert maps[k, half:, tone_band].sum() > 2 * maps[k, :half, tone_band].sum()  # in the tone's band: its half


def test_predict_explain_writes_maps_and_pictures(beep_run, tmp_path):
    from PIL import Image

    out = tmp_path / "maps"
    beep = beep_run["test"] / "beep" / "beep_0.wav"
    r = _predict(beep_run["run"].dir, beep, beep_run["test"] / "noise", "--explain", out, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 9 and rows[0]["input"] == str(beep)
    assert rows[0]["saliency"] == str(out / "beep_0.npy")
    for row in rows:
        fmap = np.load(row["saliency"])
        assert fmap.dtype == np.float32 and fmap.shape == (int(RATE * SECONDS) // 160 + 1, 16)
        png = Image.open(row["saliency"][:-4] + ".png")
        assert png.size == (fmap.shape[0] * 4, fmap.shape[1] * 4) and png.mode == "RGB"
    r = _predict(beep_run["run"].dir, beep, "--explain", out)
    assert r.exit_code == 0, r.output
    assert "Saliency maps (|gradient x log-mel|): 1 .npy and .png in" in r.output


def test_model_without_a_mel_front_end_is_refused():
    import keras

    from tlmulti.errors import RunError
    from tlmulti.evaluation.mel_saliency import MelSaliency

    inputs = keras.Input((800,), name="waveform")
    hidden = keras.layers.Dense(4, name="backbone")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(hidden))
    with pytest.raises(RunError, match=r"backbone 'yamnet.tfhub' computes its features inside one opaque layer"):
        MelSaliency(model, "yamnet.tfhub")


def test_speech_embedding_is_split_inside_its_backbone():
    import keras

    from tlmulti.architectures.speech_embedding import speech_embedding
    from tlmulti.evaluation.mel_saliency import MelSaliency

    keras.utils.set_random_seed(0)
    backbone = speech_embedding(16000)
    features = keras.Input(backbone.output.shape[1:])
    head = keras.Model(features, keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(features)), name="head")
    inputs = keras.Input((16000,), name="waveform")
    model = keras.Model(inputs, head(backbone(inputs)))
    x = np.random.default_rng(0).normal(0, 0.1, (2, 16000)).astype("float32")
    maps, mels, classes = MelSaliency(model, "speech_embedding.google")(x)
    frontend = backbone.get_layer("frontend")
    assert maps.shape == mels.shape == (2, *frontend.output.shape[1:])
    np.testing.assert_allclose(mels, np.asarray(frontend(x)), atol=1e-5)
    assert np.allclose(maps.max(axis=(1, 2)), 1) and (classes == np.asarray(model(x)).argmax(1)).all()


def test_whisper_encoder_is_explained_over_its_own_log_mel():
    import keras

    from tlmulti.architectures.whisper import whisper_encoder
    from tlmulti.evaluation.mel_saliency import MelSaliency
    from tlmulti.layers.audio import LogMelSpectrogram

    keras.utils.set_random_seed(0)
    encoder = whisper_encoder({"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "intermediate_dim": 32,
                               "num_mels": 80}, max_frames=50)
    front = LogMelSpectrogram(scale="whisper", normalize="none", n_mels=80, n_fft=400, hop_length=160, fmin=0,
                              fmax=8000, name="log_mel")
    features = keras.Input(encoder.output.shape[1:])
    head = keras.Model(features, keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(features)), name="head")
    inputs = keras.Input((8000,), name="waveform")
    model = keras.Model(inputs, head(encoder(front(inputs))))
    x = np.random.default_rng(0).normal(0, 0.1, (2, 8000)).astype("float32")
    maps, mels, _ = MelSaliency(model, "whisper_tiny_en.bundled")(x)
    assert maps.shape == (2, 50, 80) and np.isfinite(maps).all() and np.allclose(maps.max(axis=(1, 2)), 1)
    np.testing.assert_allclose(mels, np.asarray(front(x)), atol=1e-5)
