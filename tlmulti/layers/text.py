"""Text layers: WordPiece tokenisation inside the model, and pooling of token vectors.

``WordPiecePreprocessing`` turns raw strings into the ``token_ids`` / ``padding_mask`` /
``segment_ids`` a BERT-family backbone reads. Its vocabulary and sequence length are part of its
config, so a saved ``model.keras`` takes raw strings after ``keras.saving.load_model`` with no
tokenizer files next to it. ``TextPooling`` reduces token vectors to one vector per text:
masked mean (padding ignored), masked max, or the first ([CLS]) token.

Example::

    import numpy as np
    from tlmulti.layers.text import TextPooling, WordPiecePreprocessing
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "free", "money", "now"]
    pre = WordPiecePreprocessing(vocab, sequence_length=8, lowercase=True)
    x = pre(np.array(["Free money NOW", "now"]))
    x["token_ids"][0]  # [2, 5, 6, 7, 3, 0, 0, 0]
"""

from __future__ import annotations

import keras
import keras_hub  # noqa: F401  registers the keras-hub layers that saved text backbones are made of
from keras import ops

from tlmulti.choices import TEXT_POOLINGS

POOLINGS = tuple(p for p in TEXT_POOLINGS if p != "auto")  # "auto" is resolved by the task
INPUT_KEYS = ("token_ids", "padding_mask", "segment_ids")


@keras.saving.register_keras_serializable(package="tlmulti")
class WordPiecePreprocessing(keras.layers.Layer):
    """Raw strings ``(batch,)`` -> dict of int32 ``(batch, sequence_length)`` tensors.

    Each text becomes ``[CLS] tokens... [SEP]`` padded with ``[PAD]`` (or cut) to
    ``sequence_length``. ``padding_mask`` is 1 on real tokens, 0 on padding; ``segment_ids``
    are all 0 (one segment). Runs on the CPU with TensorFlow string ops, so the layer is excluded
    from XLA compilation.

    Args:
        vocabulary: the WordPiece vocabulary, a list of strings (index = token id).
        sequence_length: tokens per text, [CLS] and [SEP] included.
        lowercase / strip_accents: as the backbone's tokenizer was trained.
        outputs: which of ``token_ids``, ``padding_mask``, ``segment_ids`` to return (a
            backbone such as DistilBERT takes no ``segment_ids``).
        max_chars: characters of each text read before tokenising (default 16 per token):
            text past the point where ``sequence_length`` tokens are certain is never tokenised,
            which keeps long e-mails cheap.
        cls_token, sep_token, pad_token, unk_token: special tokens of the vocabulary.
    """

    def __init__(self, vocabulary, sequence_length=128, lowercase=True, strip_accents=False,
                 outputs=INPUT_KEYS, max_chars=None, cls_token="[CLS]", sep_token="[SEP]",
                 pad_token="[PAD]", unk_token="[UNK]", **kwargs):
        super().__init__(**kwargs)
        self.vocabulary = [str(v) for v in vocabulary]
        self.sequence_length = int(sequence_length)
        self.lowercase = bool(lowercase)
        self.strip_accents = bool(strip_accents)
        self.outputs = tuple(outputs)
        self.max_chars = int(max_chars) if max_chars else 16 * self.sequence_length
        self.cls_token, self.sep_token, self.pad_token, self.unk_token = cls_token, sep_token, pad_token, unk_token
        unknown = [k for k in self.outputs if k not in INPUT_KEYS]
        if unknown:
            raise ValueError(f"outputs must be among {INPUT_KEYS}, got {unknown[0]!r}")
        if self.sequence_length < 3:
            raise ValueError(f"sequence_length must be at least 3 ([CLS] x [SEP]), got {self.sequence_length}")
        index = {t: i for i, t in enumerate(self.vocabulary)}
        missing = [t for t in (cls_token, sep_token, pad_token, unk_token) if t not in index]
        if missing:
            raise ValueError(f"the vocabulary has no special token {missing[0]!r}")
        self.cls_id, self.sep_id, self.pad_id = index[cls_token], index[sep_token], index[pad_token]
        self._tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=self.vocabulary, lowercase=self.lowercase, strip_accents=self.strip_accents,
            oov_token=unk_token, special_tokens=[cls_token, sep_token, pad_token, unk_token],
            dtype="int32",
        )
        self._packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length, start_value=self.cls_id, end_value=self.sep_id,
            pad_value=self.pad_id, return_padding_mask=True,
        )
        self.supports_jit = False
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    def build(self, input_shape=None):
        self.built = True

    def call(self, texts):
        import tensorflow as tf

        with tf.device("cpu"):
            texts = tf.convert_to_tensor(texts)
            if texts.dtype != tf.string:
                raise TypeError(f"WordPiecePreprocessing takes strings, got {texts.dtype.name}")
            if texts.shape.rank == 2 and texts.shape[-1] == 1:
                texts = tf.squeeze(texts, -1)
            texts = tf.strings.substr(texts, 0, self.max_chars, unit="UTF8_CHAR")
            tokens = self._tokenizer(texts)
            token_ids, mask = self._packer(tokens)
            token_ids = tf.cast(token_ids, "int32")
            out = {"token_ids": token_ids, "padding_mask": tf.cast(mask, "int32"),
                   "segment_ids": tf.zeros_like(token_ids)}
        return {k: out[k] for k in self.outputs}

    def token_counts(self, texts):
        """Tokens each text has, [CLS] and [SEP] included, before cutting to ``sequence_length``
        (how many a text loses is ``max(count - sequence_length, 0)``)."""
        import numpy as np
        import tensorflow as tf

        with tf.device("cpu"):
            tokens = self._tokenizer(tf.constant([str(t)[: 4 * self.max_chars] for t in texts]))
            lengths = tokens.row_lengths() if hasattr(tokens, "row_lengths") else [len(t) for t in tokens]
            return np.asarray(lengths, dtype=np.int64) + 2

    def compute_output_spec(self, texts):
        shape = (texts.shape[0], self.sequence_length)
        return {k: keras.KerasTensor(shape, dtype="int32") for k in self.outputs}

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary": self.vocabulary, "sequence_length": self.sequence_length,
            "lowercase": self.lowercase, "strip_accents": self.strip_accents,
            "outputs": list(self.outputs), "max_chars": self.max_chars,
            "cls_token": self.cls_token, "sep_token": self.sep_token,
            "pad_token": self.pad_token, "unk_token": self.unk_token,
        })
        return config

    def save_assets(self, dir_path):  # the vocabulary is in the config; no extra files
        return

    def load_assets(self, dir_path):
        return


@keras.saving.register_keras_serializable(package="tlmulti")
class TextPooling(keras.layers.Layer):
    """Token vectors ``(batch, tokens, dim)`` and a padding mask -> ``(batch, dim)``.

    ``mean``: average of the real (mask 1) tokens, the pooling sentence-transformers models such
    as MiniLM were trained with; ``max``: element-wise max over real tokens; ``cls``: the first
    token's vector.

    Example::

        pool = TextPooling("mean")
        pool(np.ones((1, 3, 2)), np.array([[1, 1, 0]]))  # [[1., 1.]]
    """

    def __init__(self, mode="mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLINGS:
            raise ValueError(f"mode must be one of {POOLINGS}, got {mode!r}")
        self.mode = mode

    def call(self, sequence, padding_mask=None):
        if self.mode == "cls":
            return sequence[:, 0, :]
        if padding_mask is None:
            padding_mask = ops.ones(ops.shape(sequence)[:2])
        mask = ops.expand_dims(ops.cast(padding_mask, sequence.dtype), -1)
        if self.mode == "max":
            return ops.max(sequence + (mask - 1.0) * 1e9, axis=1)
        total = ops.sum(sequence * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config
