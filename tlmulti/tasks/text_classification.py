"""Text classification with BERT-family encoders: CSV / TSV / JSONL or class folders of ``.txt``.

The exported model takes raw strings: WordPiece tokenisation at the recipe's sequence length is
a layer inside it (:class:`tlmulti.layers.text.WordPiecePreprocessing`, vocabulary in its config).

The model is ``text -> tokenizer -> backbone -> head``, where the backbone is the BERT encoder
*with the pooling applied inside it* (masked mean, masked max, or [CLS]: the BERT pooler's
output when the model has one, else the first token). The head is then the same dropout +
dense on one vector per text in every phase, and the frozen phase's feature cache holds one
small vector per text instead of the whole token sequence. Layer groups, bottom to top:
``embeddings``, ``transformer_layer_0`` ... ``transformer_layer_{N-1}`` and ``pooler`` (present
only with ``cls`` pooling, the only pooling that uses it). BERT has no BatchNorm; dropout inside
the encoder is active in phases that train it and off in frozen phases and at inference. A phase
that unfreezes only the top groups trains on the cached cut (:mod:`tlmulti.training.cut`): the
hidden states below the lowest unfrozen layer and the padding mask, computed once per text with
the frozen layers' dropout off.

Example::

    import tlmulti
    recipe = tlmulti.load_recipe("recipes/text/spam_assassin.yaml", overrides=["phases.1.epochs=1"])
    run = tlmulti.train(recipe, out="runs/spam")
    print(tlmulti.predict("runs/spam", ["WIN a FREE cruise, click now!"]))
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

import numpy as np

from tlmulti import registry
from tlmulti.data import Examples, resolve_source
from tlmulti.errors import DataError, MissingWeightsError, RecipeError, TlmultiError
from tlmulti.tasks.base import ModelParts, resolve_groups
from tlmulti.tasks.classification import ClassificationTask
from tlmulti.tasks.exporting import TextExport

#: Texts whose tokens the data summary counts at most.
SUMMARY_TEXTS = 20_000


def is_handle(name: str) -> bool:
    """A backbone name that is really a location: ``hf://``/``kaggle://`` handle or a folder."""
    return "://" in name or "/" in name or name.startswith("~") or Path(name).is_dir()


def register_handle(name: str) -> str:
    """Register an ad-hoc text backbone for a keras-hub handle or a local (Hugging Face or
    keras-hub) BERT-family folder; returns the name to use (a folder becomes absolute)."""
    from tlmulti.presets.text import bert_groups

    if "://" not in name:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise TlmultiError(
                f"Backbone '{name}' is neither a registered backbone nor a folder (recipe key backbone.name); "
                "see 'tlmulti backbones list --family text'."
            )
        name = str(path.resolve())
    registry.register_backbone(
        name, source="keras_hub", families=("text",), handle=name, replace=True,
        input={"sequence_length": 128, "pooling": "cls", "tokenizer": name}, layer_groups=bert_groups(0),
        options={"class": "Backbone", "tokenizer_class": "Tokenizer"},
        description="BERT-family backbone from a handle or folder",
    )
    return name


def text_encoder(core, pooling: str, name: str = "backbone"):
    """``core`` (inputs token_ids / padding_mask / segment_ids, outputs a token sequence or a
    ``sequence_output`` / ``pooled_output`` dict) with ``pooling`` applied: one vector per text.

    The result is a functional model over the core's own layers, so layer groups are found by
    the core's layer names. A core that does not read ``padding_mask`` still gets masked pooling.
    """
    import keras

    from tlmulti.layers.text import TextPooling

    inputs = dict(core.input) if isinstance(core.input, dict) else {"token_ids": core.input}
    output = core.output
    pooled_output = None
    if isinstance(output, dict):
        pooled_output = output.get("pooled_output")
        sequence = output.get("sequence_output")
    elif len(output.shape) == 3:
        sequence = output
    elif len(output.shape) == 2:
        return core  # already one vector per text (a saved tlmulti text backbone)
    else:
        raise TlmultiError(f"Text backbone '{core.name}' gives output of shape {output.shape}; expected (batch, tokens, dim).")
    if "padding_mask" not in inputs:
        inputs["padding_mask"] = keras.Input((None,), dtype="int32", name="padding_mask")
    if pooling == "cls" and pooled_output is not None:
        vector = pooled_output
    else:
        if sequence is None:
            raise TlmultiError(f"Text backbone '{core.name}' has no sequence_output to pool with '{pooling}'.")
        vector = TextPooling(pooling, name=f"{pooling}_pooling")(sequence, inputs["padding_mask"])
    return keras.Model(inputs, vector, name=name)


def text_groups(backbone, spec) -> dict[str, list]:
    """The spec's groups, plus any ``transformer_layer_K`` the spec does not list (a local model
    deeper than the preset), each its own group in order below ``pooler``."""
    groups = resolve_groups(backbone, spec) if spec.layer_groups else {}
    claimed = {id(l) for layers in groups.values() for l in layers}
    extra = sorted(
        ((int(m.group(1)), l) for l in backbone.layers
         if id(l) not in claimed and (m := re.fullmatch(r"transformer_layer_(\d+)", l.name))),
        key=lambda t: t[0],
    )
    if not extra:
        return groups
    out = {k: v for k, v in groups.items() if k != "pooler"}
    out.update({f"transformer_layer_{k}": [l] for k, l in extra})
    if "pooler" in groups:
        out["pooler"] = groups["pooler"]
    return out


class TextClassification(TextExport, ClassificationTask):
    name = "text_classification"
    family = "text"
    cut_cache = True  # measured on three text sets within 0.5 points, 1.8-2x per epoch (README, "Cut cache")
    explains = True
    explain_note = "Word attributions (occlusion): {n} .html in {dir}"

    def explain(self, model, items, out_dir) -> list[dict]:
        """Occlusion word attributions of ``items``, a page each in ``out_dir`` (:mod:`tlmulti.tasks.text_explain`)."""
        from tlmulti.tasks.text_explain import explain_texts

        return explain_texts(self, model, items, out_dir)

    def worst_examples(self, model, examples: Examples, k: int = 16, probs=None) -> list[dict]:
        from tlmulti.tasks.text_explain import with_attributions

        return with_attributions(self, model, super().worst_examples(model, examples, k, probs=probs))

    def __init__(self, recipe, spec=None):
        name = recipe.backbone.name
        if spec is None and name and is_handle(name):
            try:
                registry.get_backbone(name)
            except TlmultiError:
                recipe.backbone.name = register_handle(name)
        super().__init__(recipe, spec=spec)
        data = recipe.data
        try:
            codecs.lookup(data.encoding)
        except LookupError:
            raise RecipeError(f"Key 'data.encoding': unknown encoding '{data.encoding}'; use e.g. utf-8 or latin-1.") from None
        if data.sequence_length and data.sequence_length < 3:
            raise RecipeError(f"Key 'data.sequence_length' must be at least 3 ([CLS] text [SEP]), got {data.sequence_length}.")

    # -- data -----------------------------------------------------------------------------------
    def derive_defaults(self) -> None:
        from tlmulti.data.manifest import MANIFEST_SUFFIXES
        from tlmulti.data.text import first_rows, text_columns_of

        data = self.recipe.data
        if data.text_column or not data.train:
            return
        source = resolve_source(data.train)
        if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
            data.text_column = text_columns_of(first_rows(source, data.encoding), source, data.label_column)

    def input_summary(self, train, parts=None) -> dict:
        """Token counts of the training texts (of 20,000 spread evenly over them when there are
        more: ``counted`` says how many)."""
        if parts is None or not len(train):
            return {}
        sample = np.unique(np.linspace(0, len(train) - 1, min(len(train), SUMMARY_TEXTS)).astype(int))
        counts = parts.preprocess.token_counts([train.x[int(i)] for i in sample])
        if counts is None or not len(counts):
            return {}
        length = self.sequence_length()
        summary = {"median": int(np.median(counts)), "p95": int(np.percentile(counts, 95)),
                   "max": int(counts.max()), "sequence_length": length,
                   "truncated": int((counts > length).sum()),
                   "truncated_fraction": round(float((counts > length).mean()), 3)}
        if len(sample) < len(train):
            summary["counted"] = len(sample)
        return {"text_tokens": summary}

    def read(self, ref, classes=None, labelled=True) -> Examples:
        """Texts in memory, or streamed (``data.streaming``; ``auto`` when the files pass 1 GiB and
        their encoding can be read from a byte offset, so not UTF-16/32): then ``x`` is a FileArray
        of where each text is, read in the input pipeline."""
        from functools import partial

        from tlmulti.data import text as texts
        from tlmulti.data.examples import reader_labels
        from tlmulti.data.lazy import FileArray, stream_choice

        source = resolve_source(ref)
        data = self.recipe.data
        args = (source, data.text_column, data.label_column, labelled, data.encoding, data.separator)
        stream = stream_choice(data.streaming, 0, 0)  # checks the value; True / False as set
        if data.streaming == "auto":  # past 1 GiB, in an encoding that can be cut into lines (not UTF-16)
            stream = texts.line_aligned(data.encoding) and stream_choice("auto", 1, texts.text_bytes(source))
        found, columns = texts.read_text_columns(*args, stream=stream)
        if stream:
            x = FileArray(found, partial(texts.load_text, separator=data.separator, encoding=data.encoding), (),
                          object, {"reader": "text", "separator": data.separator, "encoding": data.encoding})
        else:
            x = np.empty(len(found), dtype=object)
            x[:] = found
        labels = columns.pop("label", [None] * len(found))
        y, classes = reader_labels(labels, classes, labelled, str(source))
        return Examples(x=x, y=y, classes=classes, meta=columns)

    def read_inputs(self, items):
        texts = [str(t) for t in items]
        for i, t in enumerate(texts, 1):
            if not t.strip():
                raise DataError(f"Text {i} to predict is empty; give non-empty texts.")
        x = np.empty(len(texts), dtype=object)
        x[:] = texts
        return x, texts

    # -- model ----------------------------------------------------------------------------------
    def shorter_sequences(self, train, parts) -> list[int]:
        """The training texts' 95th-percentile token count, rounded up to a multiple of 16, where
        that is at most two thirds of the sequence length (shorter sequences train faster)."""
        summary = self.input_summary(train, parts).get("text_tokens")
        if not summary:
            return []
        length = max(16, -(-int(summary["p95"]) // 16) * 16)
        return [length] if length * 3 <= self.sequence_length() * 2 else []

    def sequence_length(self) -> int:
        return int(self.recipe.data.sequence_length or self.spec.input.get("sequence_length", 128))

    def pooling(self) -> str:
        pooling = self.recipe.head.pooling
        return self.spec.input.get("pooling", "cls") if pooling == "auto" else pooling

    def tokenizer_source(self) -> str:
        """Where the vocabulary comes from: a preset folder (or ``vocab.txt``) given as
        ``backbone.weights`` or imported into the weights store, else the spec's
        ``input.tokenizer``, else its handle."""
        from tlmulti.backbones import RANDOM, local_handle, stored_weights

        for candidate in (self.recipe.backbone.weights, stored_weights(self.spec)):
            if candidate and candidate != RANDOM:
                path = Path(candidate).expanduser()
                if path.is_dir() or path.suffix == ".txt":
                    return str(path)
        ref = self.spec.input.get("tokenizer") or self.spec.handle
        if Path(ref).suffix in (".keras", ".h5"):
            raise TlmultiError(
                f"Backbone '{self.spec.name}' is a saved model without a vocabulary; give one with "
                "--weights PRESET_DIR or register it with input.tokenizer (a preset folder or vocab.txt)."
            )
        return local_handle(self.spec, ref)

    def preprocessing_layer(self, outputs=("token_ids", "padding_mask", "segment_ids")):
        """The tokenizer layer, built from the backbone's vocabulary (see :meth:`tokenizer_source`)."""
        from tlmulti import paths
        from tlmulti.layers.text import WordPiecePreprocessing

        source = self.tokenizer_source()
        path = Path(source).expanduser()
        settings = {"lowercase": bool(self.spec.input.get("lowercase", True)), "strip_accents": False}
        if path.is_file():
            from tlmulti.data.text import read_text_file

            vocabulary = [l.rstrip("\r") for l in read_text_file(path).split("\n")]
            while vocabulary and not vocabulary[-1]:
                vocabulary.pop()
        else:
            import keras_hub

            cls = getattr(keras_hub.models, self.spec.options.get("tokenizer_class", "Tokenizer"))
            if not path.is_dir() and paths.offline():
                raise MissingWeightsError(
                    f"The tokenizer of backbone '{self.spec.name}' ({source}) is not on this machine and "
                    "TLMULTI_OFFLINE is set; pass --weights DIR with a local preset folder that has the vocabulary."
                )
            try:
                tok = cls.from_preset(str(path) if path.is_dir() else source)
            except Exception as exc:
                raise MissingWeightsError(
                    f"Cannot load the tokenizer of backbone '{self.spec.name}' from '{source}' "
                    f"({type(exc).__name__}: {str(exc)[:200]}); pass --weights DIR with a local preset folder."
                ) from None
            if not isinstance(tok, keras_hub.tokenizers.WordPieceTokenizer):
                raise TlmultiError(
                    f"Backbone '{self.spec.name}' uses a {type(tok).__name__}; text classification supports "
                    "WordPiece (BERT-family) vocabularies."
                )
            vocabulary = tok.get_vocabulary()
            settings = {"lowercase": tok.lowercase, "strip_accents": tok.strip_accents,
                        "unk_token": tok.oov_token}
        return WordPiecePreprocessing(vocabulary, sequence_length=self.sequence_length(), outputs=outputs,
                                      name="tokenizer", **settings)

    def build(self, classes) -> ModelParts:
        import keras

        core = self.load_backbone()
        limit = getattr(core, "max_sequence_length", None)
        if limit and self.sequence_length() > limit:
            raise RecipeError(
                f"Key 'data.sequence_length' is {self.sequence_length()} but backbone '{self.spec.name}' "
                f"has only {limit} positions; use {limit} or less."
            )
        backbone = text_encoder(core, self.pooling())
        keys = [k for k in ("token_ids", "padding_mask", "segment_ids") if k in backbone.input]
        inputs = keras.Input(shape=(), dtype="string", name="text")
        return ModelParts(
            inputs=inputs, backbone=backbone, head=self.build_head(backbone, len(classes)),
            preprocess=self.preprocessing_layer(keys), groups=text_groups(backbone, self.spec),
        )

    # -- printing -------------------------------------------------------------------------------
    def baseline_features(self, examples):
        return "tfidf", "text", [str(t) for t in examples.x]

    def format_prediction(self, result: dict) -> str:
        text = " ".join(result["input"].split())
        short = text if len(text) <= 60 else text[:57] + "..."
        tops = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top"])
        if result.get("attributions") is None:
            return f"{short!r}: {tops}"
        from tlmulti.evaluation.attribution import top_words

        raised = ", ".join(f"{w['word']} (+{w['score']:.3g})" for w in top_words(result["attributions"])) or "none"
        return f"{short!r}: {tops}\n  raised by: {raised}"
