"""Slow (``pytest -m slow``): real synthesised speech, a small source pretraining saved as a named
backbone, and transfer to unseen commands scored on a held-out accent and a flite voice.

About a minute on two cores: 30 source words and 4 commands instead of the recipes' 169 and 10.
"""

from __future__ import annotations

import shutil

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite"),
]


def test_source_pretraining_transfers_to_unseen_accent_and_voice(tmp_path):
    import tlmulti
    from tlmulti.training.pretrain import pretrain
    from tlmulti.datasets.speech import SOURCE_WORDS
    from tlmulti.synth import synthesize

    accents = ["en-us", "en-gb", "en-gb-scotland", "en-029"]
    synthesize(SOURCE_WORDS[:30], tmp_path / "source", accents=accents[:3], variants=["", "f2", "m3", "klatt"],
               flite_voices=[], seed=1)
    synthesize(["yes", "no", "stop", "go"], tmp_path / "target", accents=accents, variants=["", "f1", "m1", "m4"],
               flite_voices=["slt"], seed=2)

    source = tlmulti.load_recipe("recipes/audio/source_pretrain.yaml", overrides=[
        f"data.train={tmp_path / 'source' / 'manifest.csv'}", "phases.0.epochs=30", "data.batch_size=16",
        "data.augment=null", "callbacks.early_stopping.monitor=val_accuracy",
        "callbacks.early_stopping.patience=30", "callbacks.verbose=0"])
    run, folder = pretrain(source, "slow_test.source", out=tmp_path / "source_run")
    assert run.metrics["val"]["accuracy"] > 0.3  # 30 words: chance is 0.033

    target = tlmulti.load_recipe("recipes/audio/speech_commands_cnn.yaml", overrides=[
        "backbone.name=slow_test.source", f"data.train={tmp_path / 'target' / 'manifest.csv'}",
        "data.test=null", "data.holdout=[accent=en-029, accent=flite-slt]", "callbacks.verbose=0"])
    result = tlmulti.train(target, out=tmp_path / "target_run")
    by_group = result.metrics["test"]["by_group"]
    assert set(by_group) == {"en-029", "flite-slt"}
    assert by_group["en-029"]["accuracy"] > 0.6  # chance 0.25
    assert result.metrics["test"]["accuracy"] > 0.45
    tlmulti.registry.unregister_backbone("slow_test.source")
