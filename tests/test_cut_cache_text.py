"""The cut cache (tlmulti/training/cut.py) for transformers: a tiny BERT (text classification,
the hidden states and the padding mask cross the cut) and a tiny Whisper encoder (speech
classification). One epoch on the cut gives the weights end to end gives, the key follows the cut
point, the cached arrays are the frozen part's outputs in their dtypes, resume continues a
cut-cached text phase, and speech with augmentation falls back with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders import (assert_same_weights, assert_weights_changed, build_parts, make_tiny_bert_preset,
                            register_tiny_bert, tiny_texts, values, write_csv, write_tones)

MEAN_CUT = ["transformer_layer_0", "padding_mask"]  # top:1 of the 2-layer BERT with mean pooling


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A 2-layer BERT preset without dropout (the frozen part runs in inference mode on the cut)."""
    return make_tiny_bert_preset(tmp_path_factory.mktemp("bert") / "bert", dropout=0.0)


@pytest.fixture
def tiny_bert(bert_folder):
    from tlmulti import registry

    name = register_tiny_bert(bert_folder, name="tiny_bert_cut.test")
    yield name
    registry.unregister_backbone(name)


@pytest.fixture
def texts(tmp_path):
    return {"train": write_csv(tmp_path / "train.csv", tiny_texts(24, 0)),
            "test": write_csv(tmp_path / "test.csv", tiny_texts(8, 1))}


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    """A 2-layer, hidden-size-8 Whisper saved as a keras-hub preset (no dropout)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(2)
    path = tmp_path_factory.mktemp("whisper") / "tiny"
    keras_hub.models.WhisperBackbone(vocabulary_size=16, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
                                     num_mels=80, max_encoder_sequence_length=120, max_decoder_sequence_length=8,
                                     dropout=0.0).save_to_preset(str(path))
    return path


@pytest.fixture
def tiny_whisper(whisper_folder):
    from tlmulti import registry
    from tlmulti.presets.audio import whisper_groups

    registry._ensure_builtins()
    contract = dict(registry.get_backbone("whisper_tiny_en.keras_hub").input)
    name = "whisper_cut.test"
    registry.register_backbone(name, source="keras_hub", families=("audio",), handle=str(whisper_folder),
                               input=contract, layer_groups=whisper_groups(2), options={"class": "WhisperBackbone"},
                               replace=True)
    yield name
    registry.unregister_backbone(name)


@pytest.fixture
def tones(tmp_path):
    return write_tones(tmp_path / "tones", per_class=4)


def _phases(unfreeze, cache, epochs=1, learning_rate=0.05):
    return [{"name": "ft", "epochs": epochs, "learning_rate": learning_rate, "unfreeze": unfreeze,
             "cache_features": cache}]


def _text_recipe(backbone, texts, phases, pooling="mean", **more):
    from tlmulti.recipe import from_dict

    recipe = from_dict({
        "task": "text_classification", "name": "t", "seed": 0, "backbone": {"name": backbone},
        "head": {"pooling": pooling, "dropout": 0.0},
        "data": {"train": str(texts["train"]), "test": str(texts["test"]), "val_split": 0.25, "batch_size": 8},
        "phases": phases, "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0},
        "output": {"plots": False}, **more,
    })
    recipe.cache.dtype = "float32"
    return recipe


def _speech_recipe(backbone, tones, phases, augment=None):
    from tlmulti.recipe import from_dict

    recipe = from_dict({
        "task": "speech_classification", "name": "s", "seed": 0, "backbone": {"name": backbone},
        "head": {"pooling": "avg", "dropout": 0.0},
        "data": {"train": str(tones / "manifest.csv"), "clip_seconds": 0.5, "batch_size": 4, "val_split": 0.25,
                 "augment": augment or {}},
        "phases": phases, "callbacks": {"early_stopping": {"enabled": False}, "verbose": 0},
        "output": {"plots": False},
    })
    recipe.cache.dtype = "float32"
    return recipe


def _fine_tune(recipe):
    import keras

    from tlmulti.training.trainer import fine_tune

    task, parts, train, val = build_parts(recipe)
    before = values(parts.backbone.weights + parts.head.weights)
    keras.utils.set_random_seed(1)
    _, records = fine_tune(parts, task, train, val, recipe)
    return parts, records[0], before


def _all_weights(parts):
    return values(parts.backbone.weights + parts.head.weights)


@pytest.mark.parametrize("pooling, unfreeze, cut_after, shapes", [
    ("mean", "top:1", MEAN_CUT, [[16, 8], [16]]),  # the hidden states and the padding mask
    ("cls", "top:2", MEAN_CUT, [[16, 8], [16]]),  # the last layer and the pooler above the cut
    ("cls", "top:1", None, [[8]]),  # the pooler alone: the [CLS] vector is cut
], ids=["mean top:1", "cls top:2", "cls top:1"])
def test_text_cut_trains_the_same_weights_as_end_to_end(pooling, unfreeze, cut_after, shapes, tiny_bert, texts):
    cut_parts, cut_record, before = _fine_tune(_text_recipe(tiny_bert, texts, _phases(unfreeze, True), pooling))
    e2e_parts, e2e_record, _ = _fine_tune(_text_recipe(tiny_bert, texts, _phases(unfreeze, False), pooling))
    record = cut_record["cut_cache"]
    assert record["used"] is True and record["shapes"] == shapes and record["views"] == 1
    if cut_after is not None:
        assert record["cut_after"] == cut_after
    else:  # the slice of the first token that feeds the pooler
        assert len(record["cut_after"]) == 1 and record["cut_after"][0].startswith("get_item")
    assert record["cache_hits"] == [False, False]
    assert e2e_record["cut_cache"] == {"used": False, "reason": "cache_features: false"}
    assert cut_record["trainable_params"] == e2e_record["trainable_params"] > 0
    assert_weights_changed(before, _all_weights(cut_parts))
    assert_same_weights(_all_weights(e2e_parts), _all_weights(cut_parts), rtol=1e-4, atol=1e-5)


def test_the_text_cache_key_follows_the_cut_point_and_is_reused(tiny_bert, texts):
    _, top1, _ = _fine_tune(_text_recipe(tiny_bert, texts, _phases("top:1", True)))
    _, top2, _ = _fine_tune(_text_recipe(tiny_bert, texts, _phases("top:2", True)))
    _, again, _ = _fine_tune(_text_recipe(tiny_bert, texts, _phases("top:1", True, learning_rate=0.01)))
    assert top1["cut_cache"]["cut_after"] == MEAN_CUT
    assert top2["cut_cache"]["cut_after"] == ["embeddings_dropout", "padding_mask"]
    keys1, keys2 = top1["cut_cache"]["cache_keys"], top2["cut_cache"]["cache_keys"]
    assert len(set(keys1 + keys2)) == 4  # train and val, for each cut
    assert again["cut_cache"]["cache_keys"] == keys1 and again["cut_cache"]["cache_hits"] == [True, True]


def test_the_text_cut_holds_the_hidden_states_and_the_padding_mask_in_their_dtypes(tiny_bert, texts):
    from tlmulti.data import cache as disk
    from tlmulti.training.cut import cached_inputs, plan

    recipe = _text_recipe(tiny_bert, texts, _phases("top:1", True))
    recipe.cache.dtype = "float16"  # the default: floats halved, the mask kept exactly
    task, parts, train, val = build_parts(recipe)
    cut, record = plan(parts, task, recipe.phases[0], ["transformer_layer_1"])
    assert cut.layers == MEAN_CUT and record["shapes"] == [[16, 8], [16]]
    x_train, x_val, info = cached_inputs(cut, (train, val), recipe, "ft", verbose=0)
    assert info["hits"] == [False, False]
    hidden, mask = x_train
    assert hidden.dtype == np.float16 and mask.dtype == np.int32 and len(hidden) == len(mask) == len(train)
    tokens = parts.preprocess(np.asarray(train.x))
    np.testing.assert_array_equal(mask, np.asarray(tokens["padding_mask"]))
    assert 0 < mask.sum() < mask.size  # short texts: padded
    expected = cut.feature_model().predict(np.asarray(train.x), verbose=0)
    np.testing.assert_allclose(hidden.astype("float32"), expected[0], rtol=2e-3, atol=2e-3)
    stored = disk.load(info["keys"][0])
    assert [a.dtype for a in stored] == [np.float16, np.int32]
    np.testing.assert_array_equal(stored[1], mask)
    again = cached_inputs(cut, (train, val), recipe, "ft", verbose=0)
    assert again[2]["hits"] == [True, True] and again[2]["keys"] == info["keys"]
    np.testing.assert_array_equal(again[1][1], x_val[1])


def _text_run_recipe(backbone, texts):
    return _text_recipe(backbone, texts, [{"name": "head", "epochs": 1, "learning_rate": 0.01},
                                          {"name": "ft", "epochs": 3, "learning_rate": 0.01, "unfreeze": "top:1",
                                           "cache_features": True}],
                        deterministic=True)


class Crash(Exception):
    pass


def test_resume_in_the_middle_of_a_cut_cached_text_phase_continues_it(tiny_bert, texts, tmp_path, monkeypatch):
    import tlmulti
    from tlmulti.training import checkpoints
    from tlmulti.training.trainer import resume

    reference = tlmulti.train(_text_run_recipe(tiny_bert, texts), out=tmp_path / "reference")
    real, calls = checkpoints.save, []

    def crashing(*args, **kwargs):  # 1 start, 2 head epoch, 3 between phases, 4-6 ft epochs, 7 end
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            raise Crash("after the second epoch of the cut-cached phase")

    monkeypatch.setattr(checkpoints, "save", crashing)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        tlmulti.train(_text_run_recipe(tiny_bert, texts), out=out)
    state = checkpoints.load_state(out)
    assert (state["phase"], state["epoch"], state["cut_cache"]) == (1, 2, True)
    monkeypatch.setattr(checkpoints, "save", real)
    run = resume(out)
    ft = json.loads((out / "metrics.json").read_text())["phases"][1]
    assert ft["cut_cache"]["used"] is True and ft["cut_cache"]["cut_after"] == MEAN_CUT
    assert ft["cut_cache"]["cache_hits"] == [True, True]
    assert reference.metrics["phases"][1]["cut_cache"]["cut_after"] == MEAN_CUT
    assert [r["epoch"] for r in run.history] == [r["epoch"] for r in reference.history] == [1, 2, 3, 4]
    assert run.metrics["test"]["loss"] == pytest.approx(reference.metrics["test"]["loss"], abs=1e-5)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    loaded = tlmulti.load_model(out)  # the whole model on raw texts, as end to end training saves it
    x = np.array(["Win free cash now!", "Team meeting notes for monday"], dtype=object)
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), np.asarray(run.model.predict(x, verbose=0)),
                               atol=1e-5)


def test_speech_cut_trains_the_same_weights_as_end_to_end(tiny_whisper, tones):
    cut_parts, cut_record, before = _fine_tune(_speech_recipe(tiny_whisper, tones, _phases("top:2", True, 1, 0.01)))
    e2e_parts, e2e_record, _ = _fine_tune(_speech_recipe(tiny_whisper, tones, _phases("top:2", False, 1, 0.01)))
    record = cut_record["cut_cache"]
    assert record["used"] is True and record["cut_after"] == ["transformer_encoder_layer_0"]
    assert record["shapes"] == [[25, 8]]  # 0.5 s: 50 log-mel frames, halved by the conv stem
    assert cut_record["trainable_params"] == e2e_record["trainable_params"] > 0
    assert_weights_changed(before, _all_weights(cut_parts))
    assert_same_weights(_all_weights(e2e_parts), _all_weights(cut_parts), rtol=1e-4, atol=1e-5)
    _, top1, _ = _fine_tune(_speech_recipe(tiny_whisper, tones, _phases("top:1", True)))
    assert top1["cut_cache"]["cut_after"] == ["transformer_encoder_layer_1"]
    assert not set(top1["cut_cache"]["cache_keys"]) & set(record["cache_keys"])


@pytest.mark.parametrize("augment", [{"time_masks": 1}, {"speed": 0.1}, {}], ids=["SpecAugment", "waveform", "none"])
def test_speech_trains_end_to_end_under_auto_and_on_the_cut_when_asked(augment, tiny_whisper, tones):
    _, record, _ = _fine_tune(_speech_recipe(tiny_whisper, tones, _phases("top:1", "auto"), augment))
    assert record["cut_cache"]["used"] is False
    assert "trains end to end under cache_features: auto" in record["cut_cache"]["reason"]
    assert "cache_features: true" in record["cut_cache"]["reason"]
    _, forced, _ = _fine_tune(_speech_recipe(tiny_whisper, tones, _phases("top:1", True), augment))
    assert forced["cut_cache"]["used"] is True
    assert forced["cut_cache"]["cut_after"] == ["transformer_encoder_layer_1"]


def _speech_embedding(spec, weights, input_shape):
    from tlmulti.architectures.speech_embedding import speech_embedding

    return speech_embedding(clip_samples=int(input_shape[-1]))


def test_a_cut_that_folds_windows_into_the_batch_trains_end_to_end_with_the_reason(tones):
    """speech_embedding runs its CNN on every 0.775 s window of a clip as rows of the batch: the
    tensors at its cut are not one row per example, so the phase trains end to end."""
    from tlmulti import registry

    registry._ensure_builtins()
    spec = registry.get_backbone("speech_embedding.google")
    name = "speech_embedding_cut.test"
    registry.register_backbone(name, source="builder", families=("audio",), builder=_speech_embedding,
                               input={**spec.input, "clip_seconds": 1.0}, layer_groups=spec.layer_groups,
                               replace=True)
    try:
        recipe = _speech_recipe(name, tones, _phases("top:1", True, 1, 0.01))
        recipe.data.clip_seconds = 1.0
        parts, record, before = _fine_tune(recipe)
    finally:
        registry.unregister_backbone(name)
    assert record["cut_cache"]["used"] is False
    assert "does not hold one row per example" in record["cut_cache"]["reason"]
    assert record["epochs_run"] == 1
    assert_weights_changed(before, _all_weights(parts))


def test_text_trains_on_the_cut_under_auto_and_end_to_end_when_asked(tiny_bert, texts):
    parts, record, before = _fine_tune(_text_recipe(tiny_bert, texts, _phases("top:1", "auto")))
    assert record["cut_cache"]["used"] is True and record["cut_cache"]["cut_after"][-1] == "padding_mask"
    assert record["epochs_run"] == 1
    assert_weights_changed(before, _all_weights(parts))
    _, e2e, _ = _fine_tune(_text_recipe(tiny_bert, texts, _phases("top:1", False)))
    assert e2e["cut_cache"] == {"used": False, "reason": "cache_features: false"}
