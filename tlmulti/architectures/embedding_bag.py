"""An embedding bag for text: a token embedding and dropout, trained from scratch.

It is the backbone of ``embedding_bag.scratch``: the text task pools its token vectors like a
BERT encoder's, so the same head sits on it, and with MiniLM's tokenizer it is the no-transfer
baseline of the text benchmark.

Example::

    from tlmulti import registry
    from tlmulti.architectures.embedding_bag import build_embedding_bag
    bag = build_embedding_bag(registry.get_backbone("embedding_bag.scratch"), None, None)
    print(bag.output["sequence_output"].shape)   # (None, None, 64)
"""

from __future__ import annotations


def build_embedding_bag(spec, weights, input_shape):
    """Backbone trained from scratch: a token embedding (``options.dim`` wide) and dropout.

    Takes ``token_ids``; the task pools its token vectors like a BERT encoder's, so the same head
    sits on it. With MiniLM's tokenizer this is the no-transfer baseline of the text benchmark.
    """
    import keras

    opts = spec.options
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(int(opts.get("vocabulary_size", 30522)), int(opts.get("dim", 64)),
                               name="token_embedding")(token_ids)
    x = keras.layers.Dropout(float(opts.get("dropout", 0.0)), name="embedding_dropout")(x)
    return keras.Model({"token_ids": token_ids}, {"sequence_output": x}, name="embedding_bag")
