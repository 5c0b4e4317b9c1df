"""Tiny BERT presets, Hugging Face folders, data and recipes shared by the text tests."""

from __future__ import annotations

import json

import numpy as np

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPAM_WORDS = ["free", "money", "win", "cash", "prize", "click", "offer", "cheap", "pills", "now"]
HAM_WORDS = ["meeting", "lunch", "report", "project", "team", "notes", "agenda", "review", "thanks", "monday"]
VOCAB = SPECIAL + SPAM_WORDS + HAM_WORDS + ["the", "a", "for", "you", "is", "to", "##s", "!", ",", "."]


def tiny_texts(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = rng.choice(SPAM_WORDS if label == "spam" else HAM_WORDS, size=rng.integers(3, 7))
        rows.append((" ".join(["the", *words, "for", "you"]).capitalize() + "!", label, "web" if i % 3 else "mail"))
    return rows


def write_csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "domain"])
        w.writerows(rows)
    return path


def make_tiny_bert_preset(folder):
    """A keras-hub preset folder (config, weights, vocabulary) of a 2-layer BERT."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=32)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    backbone.save_to_preset(str(folder))
    tokenizer.save_to_preset(str(folder))
    return folder


def register_tiny(folder, pooling="mean"):
    from tlmulti import registry
    from tlmulti.presets.text import bert_groups

    registry._ensure_builtins()
    registry.register_backbone(
        "tiny_bert.test", source="keras_hub", families=("text",), handle=str(folder), replace=True,
        input={"sequence_length": 16, "pooling": pooling, "tokenizer": str(folder)}, layer_groups=bert_groups(2),
        options={"class": "BertBackbone", "tokenizer_class": "BertTokenizer"}, description="tiny test BERT",
    )
    return "tiny_bert.test"


def tiny_recipe(train, test, **over):
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
