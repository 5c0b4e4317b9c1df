"""Speech classification: readers, features, augmentation, synthesis, grouped evaluation, holdout,
and a tiny train / evaluate / predict / pretrain round trip (offline, tiny models)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.builders import dominant_freq, tone, write_tones
from tlmulti.errors import DataError, RecipeError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the espeak-ng program is not "
                                  "installed; a system package make test installs on Debian/Ubuntu only")
needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="the flite program is not installed; a "
                                 "system package make test installs on Debian/Ubuntu only")


@pytest.fixture
def tones(tmp_path):
    return write_tones(tmp_path / "tones")


# ---------------------------------------------------------------------------------------------
# Readers


def test_reader_resamples_odd_rates_and_mixes_stereo(tmp_path):
    import soundfile as sf

    from tlmulti.data.audio import AudioContract, load_audio, load_clip

    sf.write(tmp_path / "a.wav", tone(440, 11025, channels=2), 11025)
    sf.write(tmp_path / "b.flac", tone(1000, 44100), 44100)
    sf.write(tmp_path / "c.wav", tone(700, 22050, channels=3)[:, :3], 22050, subtype="PCM_16")
    cases = [("a.wav", 440), ("b.flac", 1000), ("c.wav", 700)]
    for name, freq, rate in (("d.ogg", 880, 8000), ("e.mp3", 600, 24000)):
        if name[-3:].upper() in sf.available_formats():  # libsndfile >= 1.1 writes MP3
            sf.write(tmp_path / name, tone(freq, rate, channels=2), rate)
            cases.append((name, freq))
    for name, freq in cases:
        wave, rate = load_audio(tmp_path / name, 16000)
        assert rate == 16000 and wave.ndim == 1 and wave.dtype == np.float32
        assert len(wave) == pytest.approx(8000, abs=2)
        assert dominant_freq(wave, 16000) == pytest.approx(freq, abs=5)
    clip = load_clip(tmp_path / "a.wav", AudioContract(clip_seconds=1.0))
    assert clip.shape == (16000,)
    # 0.5 s of tone centred in 1 s: silence at both ends
    assert np.abs(clip[:3000]).max() == 0 and np.abs(clip[-3000:]).max() == 0 and np.abs(clip[8000]) > 0


def test_fit_length_trims_silence_and_crops_centre():
    from tlmulti.data.audio import fit_length

    wave = np.concatenate([np.zeros(4000), tone(500, 16000, 0.25), np.zeros(9000)]).astype("float32")
    out = fit_length(wave, 8000, trim_silence=True)
    assert out.shape == (8000,)
    voiced = np.flatnonzero(np.abs(out) > 1e-3)
    assert abs((voiced[0] + voiced[-1]) / 2 - 4000) < 300  # the tone is centred
    long = np.arange(10, dtype="float32")
    np.testing.assert_array_equal(fit_length(long, 4, trim_silence=False), [3, 4, 5, 6])


def test_empty_and_non_audio_files_name_the_file(tmp_path):
    from tlmulti.data.audio import load_audio

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.wav.*empty"):
        load_audio(empty)
    fake = tmp_path / "notes.wav"
    fake.write_text("this is not audio\n" * 20)
    with pytest.raises(DataError, match="Cannot read audio file '.*notes.wav'"):
        load_audio(fake)
    with pytest.raises(DataError, match="missing.flac"):
        load_audio(tmp_path / "missing.flac")


# ---------------------------------------------------------------------------------------------
# Features and augmentation layers


@pytest.mark.parametrize("scale,normalize", [("db", "utterance"), ("whisper", "none"), ("log", "global")])
def test_log_mel_layer_matches_librosa(scale, normalize):
    from tlmulti.data.audio import AudioContract, log_mel
    from tlmulti.layers.audio import LogMelSpectrogram

    rng = np.random.default_rng(0)
    wave = (tone(600, 16000, 1.0) + 0.05 * rng.normal(size=16000)).astype("float32")
    c = AudioContract(n_mels=32, n_fft=400, hop_length=160, scale=scale, normalize=normalize)
    ref = log_mel(wave, c)
    got = np.asarray(LogMelSpectrogram(**c.frontend_config())(wave[None]))[0]
    assert got.shape == ref.shape == (c.frames, 32)
    np.testing.assert_allclose(got, ref, atol=2e-3 * max(1.0, np.abs(ref).max()))


def test_whisper_scale_matches_keras_hub_converter():
    import keras_hub

    from tlmulti.data.audio import AudioContract
    from tlmulti.layers.audio import LogMelSpectrogram

    wave = tone(440, 16000, 1.0)
    converter = keras_hub.layers.WhisperAudioConverter(max_audio_length=1)
    ref = np.asarray(converter(wave))
    c = AudioContract(n_mels=80, n_fft=400, hop_length=160, fmin=0.0, fmax=8000.0, scale="whisper",
                      normalize="none")
    got = np.asarray(LogMelSpectrogram(**c.frontend_config())(wave[None]))[0]
    assert got.shape == ref.shape == (100, 80)
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_augmentation_only_in_training():
    from tlmulti.layers.audio import LogMelSpectrogram, SpecAugment, WaveformAugment

    x = np.stack([tone(500, 16000, 1.0), tone(900, 16000, 1.0)])
    aug = WaveformAugment(speed=0.1, shift=0.1, gain_db=6, noise_prob=1.0, snr_db=(10, 20), seed=1)
    np.testing.assert_array_equal(np.asarray(aug(x)), x)
    y = np.asarray(aug(x, training=True))
    assert y.shape == x.shape and not np.allclose(y, x)
    assert not np.allclose(y[0] / (np.abs(y[0]).max()), y[1] / np.abs(y[1]).max())
    feats = LogMelSpectrogram(n_mels=40)(x)
    spec = SpecAugment(time_masks=2, time_width=20, freq_masks=2, freq_width=8, seed=0)
    np.testing.assert_array_equal(np.asarray(spec(feats)), np.asarray(feats))
    masked = np.asarray(spec(feats, training=True))
    changed = ~np.isclose(masked, np.asarray(feats))
    fill = np.asarray(feats).mean(axis=(1, 2))
    for b in range(2):  # masked values are the utterance mean; the rest is untouched
        assert changed[b].any()
        np.testing.assert_allclose(masked[b][changed[b]], fill[b], atol=1e-5)


def test_augment_layers_round_trip_config():
    import keras

    from tlmulti.layers.audio import LogMelSpectrogram, SpecAugment, WaveformAugment

    for layer in (LogMelSpectrogram(n_mels=24, scale="whisper"), SpecAugment(1, 5, 1, 3, seed=2),
                  WaveformAugment(0.1, 0.2, 3.0, 0.5, (5, 15), seed=3)):
        clone = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


# ---------------------------------------------------------------------------------------------
# Synthesis


@needs_espeak
@needs_flite
def test_synth_manifest_rows_match_files(tmp_path):
    from tlmulti.data import read_manifest
    from tlmulti.synth import synthesize

    out = tmp_path / "synth"
    rows = synthesize(["yes", "turn on"], out, accents=["en-us", "en-gb-scotland"], variants=["", "f2"],
                      flite_voices=["slt", "kal"], flite_repeats=1, seed=3)
    manifest = read_manifest(out / "manifest.csv", required=("path", "label", "speaker", "accent"))
    assert len(manifest) == len(rows) == 2 * (2 * 2 + 2)
    listed = {out / r["path"] for r in manifest}
    on_disk = {p for p in out.rglob("*.wav")}
    assert listed == on_disk and all(p.stat().st_size > 1000 for p in on_disk)
    assert {r["label"] for r in manifest} == {"yes", "turn on"}
    assert {r["accent"] for r in manifest} == {"en-us", "en-gb-scotland", "flite-slt", "flite-kal"}
    assert {r["speaker"] for r in manifest} == {"espeak:en-us", "espeak:en-us+f2", "espeak:en-gb-scotland",
                                                "espeak:en-gb-scotland+f2", "flite:slt", "flite:kal"}
    again = synthesize(["yes"], tmp_path / "again", accents=["en-us"], variants=["", "f2"], flite_voices=[], seed=3)
    assert [r["speed"] for r in again] == [r["speed"] for r in rows[:2]]  # seeded jitter


@needs_espeak
def test_synth_rejects_unknown_voices(tmp_path):
    from tlmulti.synth import synthesize

    with pytest.raises(DataError, match="no voice 'en-xx'"):
        synthesize(["yes"], tmp_path / "a", accents=["en-xx"], flite_voices=[])
    with pytest.raises(DataError, match="variant 'nobody'"):
        synthesize(["yes"], tmp_path / "b", accents=["en-us"], variants=["nobody"], flite_voices=[])


# ---------------------------------------------------------------------------------------------
# Grouped evaluation and holdout


def _task(overrides=()):
    from tlmulti.recipe import from_dict
    from tlmulti.tasks.speech_classification import SpeechClassification

    recipe = from_dict({"task": "speech_classification", "backbone": {"name": "audio_cnn.scratch"}},
                       overrides=list(overrides))
    return SpeechClassification(recipe)


def test_grouped_evaluation_matches_hand_count():
    from tlmulti.data import Examples

    task = _task(["data.group_column=accent"])
    y = np.array([0, 1, 0, 1, 0, 1])
    pred = np.array([0, 1, 1, 1, 0, 0])  # right, right, wrong, right, right, wrong
    accents = ["us", "us", "scot", "scot", "scot", "flite"]
    speakers = ["s1", "s2", "s3", "s3", "s4", "s5"]
    probs = np.eye(2)[pred] * 0.8 + 0.1
    task.probabilities = lambda model, x: probs
    ex = Examples(x=np.zeros((6, 4)), y=y, classes=["no", "yes"], meta={"accent": accents, "speaker": speakers})
    m = task.evaluate(None, ex)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["by_group"] == {"flite": {"accuracy": 0.0, "n": 1}, "scot": {"accuracy": pytest.approx(2 / 3), "n": 3},
                             "us": {"accuracy": 1.0, "n": 2}}
    assert m["worst_group"] == {"group": "flite", "accuracy": 0.0}
    spk = m["groups"]["speaker"]
    assert spk["by_group"]["s3"] == {"accuracy": 0.5, "n": 2} and spk["worst_group"]["group"] in ("s3", "s5")
    assert spk["worst_group"] == {"group": "s5", "accuracy": 0.0}
    text = task.format_metrics(m)
    assert "worst group: flite (0.000)" in text and "worst speaker: s5 (0.000)" in text
    with pytest.raises(Exception, match="Cannot group by 'dialect'"):
        task.evaluate(None, ex, group_by="dialect")


def test_split_holdout_and_errors():
    from tlmulti.data import Examples, split_holdout

    ex = Examples(x=np.arange(6), y=np.array([0, 1, 0, 1, 0, 1]), classes=["a", "b"],
                  meta={"accent": ["us", "us", "gb", "gb", "ca", "ca"]})
    kept, held = split_holdout(ex, ["accent=gb", "accent=ca"])
    assert kept.x.tolist() == [0, 1] and held.x.tolist() == [2, 3, 4, 5]
    with pytest.raises(DataError, match="matches no example.*values are: ca, gb, us"):
        split_holdout(ex, ["accent=nz"])
    with pytest.raises(DataError, match="no 'speaker' column"):
        split_holdout(ex, ["speaker=x"])
    with pytest.raises(RecipeError, match="COLUMN=VALUE"):
        split_holdout(ex, ["accent"])


def test_holdout_moves_group_to_test(tones):
    task = _task([f"data.train={tones / 'manifest.csv'}", "data.holdout=[accent=c]", "data.val_split=0.25"])
    train, val, test = task.load_splits()
    assert "c" not in set(train.meta["accent"]) | set(val.meta["accent"])
    assert set(test.meta["accent"]) == {"c"} and len(test) == 4
    assert len(train) + len(val) == 8 and test.x.shape[1] == 16000


