"""The classic baseline in every classification run: logistic regression on 16x16 pixels (images),
TF-IDF n-grams (texts) or log-mel statistics (speech), scored with the model's own metrics, with a
warning when it beats the model on validation data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders import register_tiny_cnn, text_recipe, tiny_texts, write_csv


def _halves(root, n=40, seed=0):
    """Grey 32 x 32 images whose class is which half is bright: pixels are the answer."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % 2
        a = rng.integers(0, 40, (32, 32, 3)).astype(np.uint8)
        if c:
            a[:, 16:] += 150
        else:
            a[:, :16] += 150
        folder = root / ("left", "right")[c]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"{i}.png")
    return root


def _recipe(train, test, **over):
    from tlmulti.recipe import from_dict

    data = {"task": "image_classification", "name": "halves", "seed": 0,
            "backbone": {"name": register_tiny_cnn()}, "head": {"pooling": "avg", "dropout": 0.0},
            "data": {"train": str(train), "test": str(test), "val_split": 0.25, "batch_size": 8, "image_size": [32, 32]},
            "phases": [{"name": "head", "epochs": 1, "learning_rate": 1e-5}],
            "callbacks": {"verbose": 0, "early_stopping": {"enabled": False}}, "output": {"plots": True},
            "evaluation": {"bootstrap": 0}}
    return from_dict(data, [f"{k}={v}" for k, v in over.items()])


def test_the_baseline_equals_a_scikit_learn_fit_and_warns_when_it_wins(tmp_path, capfd):
    """A barely trained model on data where pixels are the answer: the baseline wins, the run says
    so on one line, and its numbers are those of the same scikit-learn fit done here."""
    import tlmulti
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = _halves(tmp_path / "train", 40, 0), _halves(tmp_path / "test", 20, 1)
    run = tlmulti.train(_recipe(train, test), out=tmp_path / "run")
    base = json.loads((run.dir / "metrics.json").read_text())["baseline"]
    assert base["method"] == "logistic regression on 16x16 pixels" and base["seconds"] > 0
    assert base["val"]["accuracy"] > run.metrics["val"]["accuracy"]
    err = capfd.readouterr().err
    assert err.count("the classic baseline (logistic regression on 16x16 pixels) beats the model") == 1

    # the same fit by hand: 2 x 2 block means of the 32 px images, standardised, logistic regression
    from tlmulti.runs import load_run

    _, task, _ = load_run(run.dir)
    splits = {row.split(",")[0]: row.split(",")[1] for row in (run.dir / "splits.csv").read_text().splitlines()[1:]}
    examples = task.read(str(train), classes=task.classes)
    keep = [i for i, p in enumerate(examples.meta["path"]) if splits[str(p)] == "train"]
    fit_on = examples.subset(keep)

    def blocks(x):
        x = np.asarray(x, np.float32) / 255.0
        return x.reshape(len(x), 16, 2, 16, 2, 3).mean(axis=(2, 4)).reshape(len(x), -1)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0, random_state=0))
    model.fit(blocks(fit_on.x), fit_on.y)
    held = task.read(str(test), classes=task.classes)
    assert base["test"]["accuracy"] == pytest.approx(float((model.predict(blocks(held.x)) == held.y).mean()))
    page = (run.dir / "report.html").read_text()
    assert "baseline validation" in page and "logistic regression on 16x16 pixels" in page


def test_baseline_false_turns_it_off(tmp_path):
    import tlmulti

    train = _halves(tmp_path / "train", 16, 0)
    run = tlmulti.train(_recipe(train, train, **{"baseline": "false"}), out=tmp_path / "run")
    assert "baseline" not in json.loads((run.dir / "metrics.json").read_text())


def test_text_runs_get_a_tfidf_baseline(tmp_path):
    import tlmulti
    from tests.builders import make_tiny_bert_preset, register_tiny_bert

    register_tiny_bert(make_tiny_bert_preset(tmp_path / "bert"))
    train = write_csv(tmp_path / "train.csv", tiny_texts(24, 0))
    test = write_csv(tmp_path / "test.csv", tiny_texts(8, 1))
    run = tlmulti.train(text_recipe(train, test), out=tmp_path / "run")
    base = run.metrics["baseline"]
    assert base["method"] == "logistic regression on TF-IDF word 1-2-grams"
    assert set(base["test"]) >= {"accuracy", "macro_f1"} and base["test"]["accuracy"] >= 0.75


def test_the_warning_after_a_search_does_not_advise_searching_again():
    from tlmulti.training.baseline import beats_model

    metrics = {"baseline": {"method": "logistic regression", "val": {"accuracy": 0.9}}, "val": {"accuracy": 0.8}}
    assert "try --strategy auto" in beats_model(metrics, "accuracy")
    after = beats_model(metrics, "accuracy", searched=True)
    assert "already kept its best candidate" in after and "--strategy auto" not in after
    assert beats_model({**metrics, "val": {"accuracy": 0.95}}, "accuracy", searched=True) is None
