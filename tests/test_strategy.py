"""``strategy: auto`` on a case whose answer is known: a backbone whose first convolution sees
the three colour channels alike (its kernel is the same for each), so red and green images give
the same frozen features. Only training the first group separates them: the frozen probe and
the recipe's own top-group fine-tuning stay near chance, unfreezing every group learns it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.builders import build_tiny_cnn, image_recipe, write_image_folder


def build_colour_blind_cnn(spec, weights, input_shape):
    model = build_tiny_cnn(spec, weights, input_shape)
    conv = model.get_layer("block1_conv")
    kernel, bias = conv.get_weights()
    conv.set_weights([np.repeat(kernel[:, :, :1, :], 3, axis=2), bias])
    return model


@pytest.fixture
def colour_blind():
    from tlmulti import registry

    registry._ensure_builtins()
    name = "colour_blind_cnn.test"
    registry.register_backbone(
        name, source="builder", families=("vision",), builder=build_colour_blind_cnn,
        input={"size": [16, 16], "channels": 3, "normalization": "unit"},
        layer_groups={f"block{i}": [f"block{i}_.*"] for i in (1, 2, 3)}, description="test", replace=True)
    yield name
    registry.unregister_backbone(name)


def _recipe(backbone, train, **over):
    recipe = image_recipe(backbone, train, phases=[
        {"name": "head", "epochs": 8, "learning_rate": 0.01},
        {"name": "finetune", "epochs": 16, "learning_rate": 0.003, "unfreeze": "top:1"}])
    recipe.strategy, recipe.strategy_budget = "auto", 50.0
    recipe.data.image_size = [112, 112]  # seven times the images' side: a smaller input (96 px) is a candidate
    for key, value in over.items():
        setattr(recipe, key, value)
    return recipe


def test_auto_unfreezes_every_group_where_only_that_learns_and_the_saved_recipe_reruns_it(colour_blind, tmp_path):
    import tlmulti
    from tlmulti.recipe import load_recipe

    train = write_image_folder(tmp_path / "images", classes=("red", "green"), per_class=24, size=(16, 16))
    run = tlmulti.train(_recipe(colour_blind, train), out=tmp_path / "run")
    record = run.metrics["strategy"]
    rows = {r["name"]: r for r in record["candidates"]}
    assert rows["probe (frozen backbone)"]["val"] <= 0.75 and rows["as written"]["val"] <= 0.75, rows
    assert "all groups" in record["chosen"] and record["val"] >= 0.9, record
    assert all(r["seconds"] > 0 for r in rows.values() if "val" in r)
    assert any(name.endswith("input 96 px") and "val" in r for name, r in rows.items()), rows
    assert run.metrics["val"]["accuracy"] >= 0.9
    assert record["metric"] == "accuracy" and record["margin"] == pytest.approx(1 / run.metrics["val"]["n"], abs=1e-6)
    assert record["compared"] == "paired examples"
    paired = rows["as written"].get("paired") or rows["probe (frozen backbone)"]["paired"]
    assert paired["wins"] + paired["losses"] <= run.metrics["val"]["n"] and 0 < paired["chance"] <= 1
    from tlmulti.reports.sections import strategy_section

    shown = strategy_section(record)  # report.html's table of candidates
    assert "right where they disagree" in shown and f"{paired['wins']} : {paired['losses']} against" in shown

    saved = load_recipe(run.dir / "recipe.yaml")
    assert saved.strategy == "fixed" and saved.phases[-1].unfreeze == "all" and saved.phases[-1].epochs == 16
    again = tlmulti.train(saved, out=tmp_path / "again")
    assert "strategy" not in again.metrics
    assert again.metrics["val"]["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"], abs=1e-6)


def test_auto_needs_a_frozen_phase_and_validation_data(colour_blind, tmp_path):
    from click.testing import CliRunner

    from tlmulti.cli import main

    train = write_image_folder(tmp_path / "images", per_class=4)
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--backbone", colour_blind,
                                       "--strategy", "auto", "--set", "data.val_split=0",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "strategy: auto and --tune compare candidates on validation data" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_the_default_recipes_search_and_a_recipe_of_ones_own_runs_as_written():
    from tlmulti.recipe import from_dict, load_recipe

    for task in ("image_classification", "multilabel_image_classification", "object_detection", "segmentation",
                 "text_classification", "speech_classification"):
        assert load_recipe(task=task).strategy == "auto", task
    assert from_dict({"task": "image_classification"}).strategy == "fixed"


def test_without_a_frozen_phase_the_default_search_trains_as_written_and_tune_refuses(colour_blind, tmp_path):
    from click.testing import CliRunner

    from tlmulti.cli import main

    train = write_image_folder(tmp_path / "images", per_class=4)
    args = ["vision", "train", "--data", str(train), "--backbone", colour_blind, "--set", "phases.0.epochs=0",
            "--set", "phases.1.epochs=1", "--set", "data.batch_size=4"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "strategy: auto: the recipe has no frozen head phase" in result.output
    assert "Strategy search" not in result.output
    assert "strategy: fixed" in (tmp_path / "r" / "recipe.yaml").read_text()
    result = CliRunner().invoke(main, [*args, "--tune", "2", "--out", str(tmp_path / "t")])
    assert result.exit_code != 0 and "start from a frozen head phase, and the recipe has none" in result.output


def test_the_recipe_is_checked_before_any_candidate_trains(colour_blind, tmp_path):
    from click.testing import CliRunner

    from tlmulti.cli import main

    train = write_image_folder(tmp_path / "images", classes=("red", "green"), per_class=4, size=(16, 16))
    result = CliRunner().invoke(main, ["vision", "train", "--data", str(train), "--backbone", colour_blind,
                                       "--adapt", "dann", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "adaptation.target_data" in result.output, result.output
    assert "probe (frozen backbone)" not in result.output and "Epoch" not in result.output
    assert not (tmp_path / "r").exists()


def test_a_named_positive_class_is_compared_on_auroc(colour_blind, tmp_path):
    from tlmulti.tasks import make_task

    train = write_image_folder(tmp_path / "images", classes=("red", "green"), per_class=4, size=(16, 16))
    recipe = _recipe(colour_blind, train)
    assert make_task(recipe).primary_metric == "accuracy"
    recipe.data.positive_class = "green"
    assert make_task(recipe).primary_metric == "auroc"


def test_the_budget_holds_back_the_chosen_candidates_full_run():
    from tlmulti.training.budget import fits

    # plain run 100 s, budget 3x: 150 s spent, a 40 s candidate, then a plain final run fits
    assert fits(150, 40, 100, None, 3.0)
    # the same once the best candidate (every group unfrozen) needs 160 s at full length: it does not
    assert not fits(150, 40, 100, 160, 3.0)
    # a best candidate cheaper than a plain run still holds back a plain run
    assert fits(150, 50, 100, 30, 3.0) and not fits(150, 51, 100, 30, 3.0)


def test_a_plain_run_counts_the_one_off_costs_of_the_short_run_once():
    from tlmulti.training.budget import full_length

    # a 5-epoch short run of 30 s whose first epoch paid 18 s of cut-cache features and tracing:
    # the other 5 of the 10 planned epochs cost 2 s each (not another 30 s)
    assert full_length(30.0, [10], [[20.0, 2.0, 2.0, 2.5, 1.5]]) == pytest.approx(40.0)
    # two phases, each scaled by its own epochs; a phase stopped early still counts its planned length
    assert full_length(12.0, [4, 6], [[3.0, 1.0], [4.0, 2.0, 2.0]]) == pytest.approx(12.0 + 2 * 1.0 + 3 * 2.0)
    # a one-epoch short run: that epoch is all there is to go by
    assert full_length(5.0, [2], [[4.0]]) == pytest.approx(9.0)


class _ScriptedBuild:
    """A stand-in for a candidate's build whose validation scores come from a table keyed by
    (input side, depth, rate as a multiple of the recipe's): the search's order is what is tested."""

    scores: dict = {}
    seconds_by_depth: dict = {}  # a short run's seconds by the groups it unfreezes (0.01 s if absent)
    correct = None  # scores only: candidates are compared on the margin

    def __init__(self, recipe, metric, trainer, callbacks=()):
        from types import SimpleNamespace

        self.side = int(recipe.data.image_size[0])
        self.changed = recipe.data.augment.flip == "none" or recipe.head.pooling == "max"
        self.task = SimpleNamespace(strategy_inputs=True, image_size=lambda: (224, 224), strategy_variants=lambda: [])
        self.train, self.val, self.metric, self.head_seconds = [0] * 300, [0] * 100, "accuracy", 0.01
        self.seconds = 0.01
        self.probe = self.scores[(self.side, "none", 0)]

    def tune(self, phases):
        last = phases[-1]
        value = self.scores[(self.side, last.unfreeze, round(last.learning_rate / 0.003))]
        seconds = self.seconds_by_depth.get(last.unfreeze, 0.01)
        self.full_seconds = 2 * seconds
        return value - (0.05 if self.changed else 0.0), seconds


def _scripted_search(monkeypatch, tmp_path, scores, sides, budget, seconds=None, out=None):
    """``strategy.search`` over :class:`_ScriptedBuild` with validation ``scores`` and short runs'
    ``seconds`` by depth, smaller image ``sides`` to try, and ``budget`` plain runs: a flipped
    recipe at 224 px, a frozen head then the top group fine-tuned at 0.003."""
    import io

    from tlmulti.training import strategy

    monkeypatch.setattr(_ScriptedBuild, "scores", scores)
    monkeypatch.setattr(_ScriptedBuild, "seconds_by_depth", seconds or {})
    monkeypatch.setattr(strategy, "_Build", _ScriptedBuild)
    monkeypatch.setattr(strategy, "smaller_sides", lambda task, train: list(sides))
    recipe = image_recipe("tiny_cnn.test", tmp_path, phases=[
        {"name": "head", "epochs": 4, "learning_rate": 0.01},
        {"name": "finetune", "epochs": 6, "learning_rate": 0.003, "unfreeze": "top:1"}])
    recipe.strategy, recipe.strategy_budget, recipe.data.image_size = "auto", budget, [224, 224]
    recipe.data.augment.flip = "horizontal"
    return strategy.search(recipe, (None, None), out=out or io.StringIO())


def test_a_cheap_candidate_is_costed_by_its_own_depth_not_by_the_dearer_one_before_it(monkeypatch, tmp_path):
    """A short run of the recipe's depth costs 1 s (a plain run about 2 s), one of every group 10 s:
    in a 3x budget the ten-times rate at the recipe's depth still fits after every group was tried."""
    _, record = _scripted_search(monkeypatch, tmp_path, {(224, "none", 0): 0.5, (224, "top:1", 1): 0.8,
                                                         (224, "all", 1): 0.7, (224, "top:1", 10): 0.9},
                                 sides=[], budget=3.0, seconds={"top:1": 1.0, "all": 10.0})
    rows = {r["name"]: r for r in record["candidates"]}
    assert rows["all groups"]["val"] == pytest.approx(0.7)
    assert rows["as written, rate x10"]["val"] == pytest.approx(0.9)  # costed at 1 s, not at the 10 s before it
    assert record["chosen"] == "as written, rate x10"
    assert record["plain_estimate_seconds"] == pytest.approx(2.0, abs=0.5)  # the build and 2x the short run


@pytest.mark.parametrize("contract_again, chosen", [
    (0.90, "as written; input 96 px; all groups, rate x10"),
    (0.97, "all groups, rate x10; input 224 px")])
def test_depth_and_rate_are_tried_on_the_smallest_input_and_the_winner_on_the_larger_ones(
        monkeypatch, tmp_path, contract_again, chosen):
    import io

    table = io.StringIO()
    chosen_recipe, record = _scripted_search(
        monkeypatch, tmp_path, {(224, "none", 0): 0.5, (96, "none", 0): 0.4,
                                (224, "top:1", 1): 0.80, (96, "top:1", 1): 0.70,  # 96 px loses at the recipe's depth
                                (96, "top:1", 10): 0.75,
                                (96, "all", 1): 0.85, (96, "all", 10): 0.95, (224, "all", 10): contract_again},
        sides=[96], budget=50.0, out=table)
    rows = {r["name"]: r.get("val") for r in record["candidates"]}
    assert rows["as written; input 96 px"] == pytest.approx(0.70)
    assert rows["as written; input 96 px; all groups"] == pytest.approx(0.85)
    assert rows["as written; input 96 px; all groups, rate x10"] == pytest.approx(0.95)
    assert rows["as written; input 96 px, rate x10"] == pytest.approx(0.75)  # each depth at ten times its rate
    assert rows["all groups, rate x10; input 224 px"] == pytest.approx(contract_again)
    assert "all groups" not in rows  # the contract's own depth step is not needed: the small input won
    assert record["chosen"] == chosen and chosen in table.getvalue()
    assert chosen_recipe.strategy == "fixed" and chosen_recipe.phases[-1].unfreeze == "all"
    assert chosen_recipe.phases[-1].learning_rate == pytest.approx(0.03) and chosen_recipe.phases[-1].epochs == 6
    assert list(chosen_recipe.data.image_size) == ([96, 96] if contract_again < 0.95 else [224, 224])
    assert any(name.endswith("; no flips") for name in rows) and any(name.endswith("; max pooling") for name in rows)


@pytest.mark.parametrize("budget, revisited", [(5.0, False), (10.0, True)])
def test_a_candidate_starts_only_if_its_own_full_run_would_fit_should_it_win(monkeypatch, tmp_path, budget, revisited):
    """Short runs of 1 s at 96 px (a plain run at 224 px about 2 s): every group at 10x wins at 96 px,
    and trying it at 224 px costs about 5.4 s (the pixels), 10.9 s at full length should it win. In
    5 plain runs (10 s) that full run cannot fit after it, so it is not tried; in 10 it is."""
    _, record = _scripted_search(monkeypatch, tmp_path, {(224, "none", 0): 0.5, (96, "none", 0): 0.4,
                                                         (224, "top:1", 1): 0.80, (96, "top:1", 1): 0.70,
                                                         (96, "top:1", 10): 0.75, (96, "all", 1): 0.85,
                                                         (96, "all", 10): 0.95, (224, "all", 10): 0.99},
                                 sides=[96], budget=budget, seconds={"top:1": 1.0, "all": 1.0})
    rows = {r["name"]: r for r in record["candidates"]}
    assert rows["as written; input 96 px; all groups, rate x10"]["val"] == pytest.approx(0.95)
    revisit = rows["all groups, rate x10; input 224 px"]
    assert ("val" in revisit) is revisited and (revisit.get("skipped") == "time budget") is not revisited
    assert record["chosen"] == ("all groups, rate x10; input 224 px" if revisited
                                else "as written; input 96 px; all groups, rate x10")


def test_on_accuracy_a_lead_must_be_more_than_luck_on_the_examples_the_candidates_disagree_on():
    """Two candidates on 126 validation examples: only the examples they disagree on count, and a
    split as lopsided as the candidate's must have under a 0.159 chance if both were as good (the
    exact sign test): 2 of 2 (0.25) is not enough, 3 of 3 (0.125) is; 12 against 10 (0.42) and 17
    against 11 (0.17) are not, 18 against 10 (0.09) is."""
    from tlmulti.training.strategy import _Candidate, leads

    def candidate(right):
        c = _Candidate("c", [], float(np.mean(right)))
        c.correct = np.asarray(right, dtype=bool)
        return c

    def pair(only_new, only_best, both=60):
        base = [True] * both + [False] * (126 - both)
        best, new = list(base), list(base)
        for i in range(only_new):
            new[both + i] = True
        for i in range(only_best):
            best[both + only_new + i] = True
        return candidate(new), candidate(best)

    for wins, losses, expected in [(2, 0, False), (3, 0, True), (12, 10, False), (17, 11, False), (18, 10, True),
                                   (0, 3, False)]:
        new, best = pair(wins, losses)
        assert leads(new, best, margin=0.0) is expected, (wins, losses)
        assert (new.paired["wins"], new.paired["losses"]) == (wins, losses)
    new, best = pair(12, 10)
    new.correct = best.correct = None  # other metrics: the margin on the value (2 of 126 ahead)
    assert leads(new, best, margin=0.01) and not leads(new, best, margin=0.02)
