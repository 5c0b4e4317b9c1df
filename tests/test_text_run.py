"""A two-phase text run on a tiny BERT through the shared trainer: feature cache, unfreezing,
layer-wise lr decay, reloading model.keras on raw strings, and the ``tlmulti text`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.builders import make_tiny_bert_preset, register_tiny_bert, text_recipe, tiny_texts, write_csv


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One trained two-phase run on the tiny BERT, shared by the tests below."""
    import tlmulti
    from tlmulti import registry

    root = tmp_path_factory.mktemp("tiny_text")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLMULTI_HOME", str(root / "home"))
        preset = make_tiny_bert_preset(root / "preset")
        register_tiny_bert(preset)
        train = write_csv(root / "train.csv", tiny_texts(32, 0))
        test = write_csv(root / "test.csv", tiny_texts(12, 1))
        run = tlmulti.train(text_recipe(train, test), out=root / "run")
        yield {"run": run, "root": root, "preset": preset, "train": train, "test": test}
    registry.unregister_backbone("tiny_bert.test")


# --------------------------------------------------------------------------------------------
# Training through the shared trainer


def test_two_phase_run_uses_cache_then_unfreezes_top_groups(tiny_run):
    run = tiny_run["run"]
    head, finetune = run.metrics["phases"]
    assert head["feature_cache"] is True and head["unfrozen_groups"] == []
    assert head["trainable_params"] == 8 * 2 + 2  # dense on one 8-wide vector per text
    assert finetune["feature_cache"] is False
    assert finetune["unfrozen_groups"] == ["transformer_layer_0", "transformer_layer_1"]  # mean: no pooler group
    assert finetune["group_lr"] == pytest.approx({"transformer_layer_1": 1e-3, "transformer_layer_0": 5e-4})
    losses = [r["loss"] for r in run.history if r["phase"] == "head"]
    assert losses[-1] < losses[0]
    test = run.metrics["test"]
    assert test["n"] == 12 and set(test["by_group"]) == {"mail", "web"}
    for name in ("model.keras", "recipe.yaml", "run.json", "metrics.json", "history.csv"):
        assert (run.dir / name).is_file()


def test_reloaded_model_takes_raw_strings(tiny_run):
    import tensorflow as tf

    import tlmulti

    run = tiny_run["run"]
    texts = ["Win free cash now!", "Team meeting notes for monday"]
    expected = run.model.predict(tf.constant(texts), verbose=0)
    model = tlmulti.load_model(run.dir)
    assert model.input.dtype == "string"
    got = model.predict(tf.constant(texts), verbose=0)
    assert got.shape == (2, 2) and np.allclose(got, expected, atol=1e-5)


def test_fine_tuned_backbone_saved_by_name_is_reused(tiny_run):
    import tensorflow as tf

    from tlmulti import registry
    from tlmulti.runs import save_run_backbone
    from tlmulti.tasks.text_classification import TextClassification

    save_run_backbone(tiny_run["run"].dir, "tiny_text.tuned")
    try:
        recipe = text_recipe(tiny_run["train"], tiny_run["test"], **{"backbone.name": "tiny_text.tuned"})
        parts = TextClassification(recipe).build(["ham", "spam"])
        assert list(parts.groups) == ["embeddings", "transformer_layer_0", "transformer_layer_1"]
        texts = tf.constant(["Win free cash now!"])
        run_backbone = tiny_run["run"].model.get_layer("backbone")
        tokens = tiny_run["run"].model.get_layer("tokenizer")(texts)
        assert np.allclose(parts.feature_model().predict(texts, verbose=0), run_backbone(tokens), atol=1e-5)
    finally:
        registry.unregister_backbone("tiny_text.tuned")


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_predict_raw_strings_file_and_json(tiny_run, tmp_path):
    from tlmulti.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("Cheap pills now\n\nProject review on monday\n")
    runner = CliRunner()
    result = runner.invoke(main, ["text", "predict", str(tiny_run["run"].dir), "Win a prize!",
                                  "--file", str(texts), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["input"] for r in out] == ["Win a prize!", "Cheap pills now", "Project review on monday"]
    assert all(len(r["top"]) == 2 and abs(sum(t["probability"] for t in r["top"]) - 1) < 1e-4 for r in out)
    plain = runner.invoke(main, ["text", "predict", str(tiny_run["run"].dir), "Win a prize!"])
    assert plain.exit_code == 0 and plain.output.startswith("'Win a prize!': ")


def test_cli_evaluate_by_domain(tiny_run):
    from tlmulti.cli import main

    result = CliRunner().invoke(main, ["text", "evaluate", str(tiny_run["run"].dir), "--data", str(tiny_run["test"]),
                                       "--group-by", "domain", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["n"] == 12 and set(metrics["by_group"]) == {"mail", "web"} and "f1" in metrics


def test_cli_train_bad_column_exits_2_with_one_line(tmp_path):
    from tlmulti.cli import main

    data = tmp_path / "d.csv"
    data.write_text("message,label\nhello,a\nbye,b\n")
    result = CliRunner().invoke(main, ["text", "train", "--data", str(data), "--text-column", "body",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "no text column 'body'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_cli_help_lists_text_options():
    from tlmulti.cli import main

    runner = CliRunner()
    for args in (["text", "--help"], ["text", "train", "--help"], ["text", "evaluate", "--help"],
                 ["text", "predict", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    train_help = runner.invoke(main, ["text", "train", "--help"]).output
    assert "--text-column" in train_help and "--label-column" in train_help and "--max-length" in train_help


def test_text_adaptation_auto_on_unlabelled_texts(tiny_run, tmp_path, monkeypatch):
    """Adaptation runs for text too: target texts without labels, every candidate recorded."""
    import tlmulti

    monkeypatch.setenv("TLMULTI_HOME", str(tiny_run["root"] / "home"))
    target = tmp_path / "target.txt"
    target.write_text("\n".join(t.upper() for t, _, _ in tiny_texts(16, 5)) + "\n")
    recipe = text_recipe(tiny_run["train"], tiny_run["test"], **{
        "adaptation.method": "auto", "adaptation.target_data": str(target), "adaptation.epochs": 1,
        "adaptation.candidates": "[adabn, dann, entropy]"})
    run = tlmulti.train(recipe, out=tmp_path / "run")
    a = json.loads((tmp_path / "run" / "metrics.json").read_text())["adaptation"]
    assert a["target_examples"] == 16 and set(a["candidates"]) == {"none", "adabn", "dann", "entropy"}
    assert "no BatchNorm layers" in a["candidates"]["adabn"]["skipped"]  # BERT has LayerNorm
    assert all(np.isfinite(a["candidates"][m]["score"]) for m in ("none", "dann", "entropy"))
    assert (tmp_path / "run" / "model.keras").is_file() and run.metrics["adaptation"]["chosen"] == a["chosen"]


def test_auto_tries_the_texts_own_length_and_the_saved_recipe_keeps_the_winner(tiny_run, tmp_path):
    import tlmulti
    from tlmulti.recipe import load_recipe

    recipe = text_recipe(tiny_run["train"], tiny_run["test"], **{"data.sequence_length": 32, "strategy": "auto",
                                                                   "strategy_budget": 50})
    run = tlmulti.train(recipe, out=tmp_path / "run")
    rows = {r["name"]: r for r in run.metrics["strategy"]["candidates"]}
    shorter = [r for name, r in rows.items() if name.endswith("sequence 16 tokens")]
    assert shorter and "val" in shorter[0] and "data.sequence_length=16" in shorter[0]["changes"], rows
    saved = load_recipe(run.dir / "recipe.yaml")
    chose_shorter = "data.sequence_length=16" in run.metrics["strategy"]["changes"]
    assert saved.data.sequence_length == (16 if chose_shorter else 32)
