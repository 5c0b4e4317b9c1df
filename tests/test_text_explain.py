"""Word attributions of text runs: ``text predict --explain DIR`` and the highlighted texts of
report.html.

One tiny run (2-layer BERT, hidden size 8) is trained for the module on texts whose class is
carried by one keyword alone: every text holds ``prize`` (spam) or ``meeting`` (ham) once, at a
random place among words drawn from one pool for both classes, so the keyword of a correctly
classified text must be the word whose removal costs the predicted class the most.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.builders import HAM_WORDS, SPAM_WORDS, make_tiny_bert_preset, register_tiny_bert, text_recipe, write_csv

KEYWORDS = {"spam": "prize", "ham": "meeting"}
POOL = [w for w in SPAM_WORDS + HAM_WORDS if w not in KEYWORDS.values()] + ["the", "a", "for", "you", "is", "to"]


def keyword_texts(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = list(rng.choice(POOL, size=int(rng.integers(3, 7))))
        words.insert(int(rng.integers(0, len(words) + 1)), KEYWORDS[label])
        rows.append((" ".join(words), label, "web"))
    return rows


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory):
    import tlmulti
    from tlmulti import registry

    root = tmp_path_factory.mktemp("text_explain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLMULTI_HOME", str(root / "home"))
        register_tiny_bert(make_tiny_bert_preset(root / "preset"))
        try:
            train = write_csv(root / "train.csv", keyword_texts(48, 0))
            test = write_csv(root / "test.csv", keyword_texts(16, 1))
            recipe = text_recipe(train, test)
            recipe.output.plots = True
            recipe.phases = recipe.phases[:1]
            recipe.phases[0].unfreeze, recipe.phases[0].epochs, recipe.phases[0].learning_rate = "all", 25, 0.01
            run = tlmulti.train(recipe, out=root / "run")
            yield {"run": run, "root": root, "test": keyword_texts(16, 1)}
        finally:
            registry.unregister_backbone("tiny_bert.test")


def _predict(*args):
    from tlmulti.cli import main

    return CliRunner().invoke(main, ["text", "predict", *map(str, args)], catch_exceptions=False)


def test_the_deciding_keyword_gets_the_largest_attribution(keyword_run):
    from tlmulti.runs import load_run
    from tlmulti.tasks.text_explain import attributions

    _, task, model = load_run(keyword_run["run"].dir)
    texts = [t for t, _, _ in keyword_run["test"]]
    labels = [label for _, label, _ in keyword_run["test"]]
    rows = attributions(task, model, texts)
    correct = [(r, label) for r, label in zip(rows, labels) if task.classes[r["class"]] == label]
    assert len(correct) >= 12, f"the tiny model should learn the keyword: {len(correct)}/16 correct"
    hits = 0
    for row, label in correct:
        words = [a["word"] for a in row["attributions"]]
        scores = [a["score"] for a in row["attributions"]]
        hits += words[int(np.argmax(scores))] == KEYWORDS[label]
    assert hits >= 0.8 * len(correct), f"keyword on top in only {hits} of {len(correct)} correct texts"
    assert all(max(a["score"] for a in r["attributions"]) > 0 for r, _ in correct)


def test_predict_explain_json_rows_pages_and_escaping(keyword_run, tmp_path):
    run_dir, out = keyword_run["run"].dir, tmp_path / "why"
    texts = ["the prize for you", "notes <script>alert(1)</script> meeting   agenda"]
    r = _predict(run_dir, *texts, "--explain", out, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["input"] for row in rows] == texts
    for n, (row, text) in enumerate(zip(rows, texts), start=1):
        assert [a["word"] for a in row["attributions"]] == text.split()
        assert all(isinstance(a["score"], float) and -1 <= a["score"] <= 1 for a in row["attributions"])
        assert row["explanation"] == str(out / f"{n}.html") and (out / f"{n}.html").is_file()
    page = (out / "2.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "background:rgba(" in page and "Predicted <b>" in page

    text = keyword_run["test"][1][0]  # a spam text of the test set
    r = _predict(run_dir, text, "--explain", out, "--json")
    expected = sorted((a for a in json.loads(r.output)[0]["attributions"] if a["score"] > 0), key=lambda a: -a["score"])
    r = _predict(run_dir, text, "--explain", out)
    assert r.exit_code == 0, r.output
    raised = next(l for l in r.output.splitlines() if l.strip().startswith("raised by:"))
    listed = [w.split(" (+")[0] for w in raised.split(":", 1)[1].strip().split(", ")]
    assert expected and listed == [a["word"] for a in expected[:5]]
    assert "Word attributions (occlusion): 1 .html in" in r.output


def test_report_highlights_the_most_wrong_texts(keyword_run):
    page = (keyword_run["run"].dir / "report.html").read_text()
    assert "Words on red raised the predicted class" in page
    assert page.count('<span style="background:rgba(') >= 8


def test_attributions_align_with_words_and_cap():
    from tlmulti.evaluation.attribution import top_words, word_attributions

    calls = []

    def probabilities(texts):  # class 1's probability: the share of words that are "good"
        calls.append(len(texts))
        share = np.array([t.split().count("good") / max(len(t.split()), 1) for t in texts])
        return np.stack([1 - share, share], axis=1)

    text = "good  bad good\tugly good"
    row = word_attributions(probabilities, [text, "x " * 5], max_words=3)
    assert calls == [2 + 3 + 3]  # both texts and every occluded variant in one call
    words = row[0]["attributions"]
    assert row[0]["class"] == 1 and row[0]["probability"] == pytest.approx(0.6)
    assert [a["word"] for a in words] == ["good", "bad", "good", "ugly", "good"]
    assert words[3]["score"] is None and words[4]["score"] is None  # past max_words
    assert words[0]["score"] == pytest.approx(0.6 - 0.5) and words[1]["score"] == pytest.approx(0.6 - 0.75)
    assert [w["word"] for w in top_words(words)] == ["good", "good"]
    assert row[1]["class"] == 0 and all(a["score"] == 0 for a in row[1]["attributions"][:3])
