"""Registry and recipe validation: no TensorFlow needed."""

import re
import subprocess
import sys

import pytest

import tlmulti
from tlmulti import registry
from tlmulti.errors import RecipeError, RegistryError
from tlmulti.overrides import apply_overrides
from tlmulti.recipe import from_dict, load_recipe, recipes_dir


def test_builtin_presets_are_registered():
    names = {s.name for s in registry.list_backbones("vision")}
    assert {"vgg16.hed_bsds500", "resnet50.imagenet", "efficientnet_v2_b0.tfhub"} <= names
    assert registry.get_task("image_classification").default_backbone == "efficientnet_lite0.imagenet"


def test_unknown_backbone_suggests_nearest():
    with pytest.raises(RegistryError, match="Did you mean 'vgg16.imagenet'"):
        registry.get_backbone("vgg16.imagenett")


def test_register_custom_backbone_and_task_roundtrip():
    spec = tlmulti.register_backbone("custom.x", source="builder", families=("vision",),
                                     builder="tests.builders:build_tiny_cnn", layer_groups={"a": "conv.*"})
    try:
        assert registry.get_backbone("custom.x").layer_groups == {"a": ("conv.*",)}
        with pytest.raises(RegistryError, match="already registered"):
            tlmulti.register_backbone("custom.x", source="builder", families=("vision",))
        with pytest.raises(RegistryError, match="unknown source"):
            tlmulti.register_backbone("custom.y", source="ftp", families=("vision",))
    finally:
        registry.unregister_backbone(spec.name)


def test_a_registered_task_names_the_classes_its_data_and_head_sections_validate_against():
    from dataclasses import dataclass

    from tlmulti.recipe import DataConfig, HeadConfig

    @dataclass
    class SlideData(DataConfig):
        magnification: int = 20

    tlmulti.register_task("slides.test", family="vision", implementation="tests.nowhere:Slides",
                          default_backbone="vgg16.imagenet", data_config=SlideData,
                          head_config="tlmulti.task_configs:SegmentationHeadConfig")
    tlmulti.register_task("plain.test", family="vision", implementation="tests.nowhere:Plain",
                          default_backbone="vgg16.imagenet")
    try:
        recipe = from_dict({"task": "slides.test", "data": {"magnification": 40}, "head": {"decoder": "unet"}})
        assert isinstance(recipe.data, SlideData) and recipe.data.magnification == 40
        assert recipe.head.decoder == "unet"
        with pytest.raises(RecipeError, match="Did you mean 'data.magnification'"):
            from_dict({"task": "slides.test", "data": {"magnificaton": 40}})
        recipe = from_dict({"task": "plain.test"})
        assert type(recipe.data) is DataConfig and type(recipe.head) is HeadConfig
    finally:
        registry.unregister_task("slides.test")
        registry.unregister_task("plain.test")


def test_cli_help_does_not_import_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from tlmulti.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(main, ['vision', 'train', '--help']); assert r.exit_code == 0; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_bundled_recipes_validate():
    files = sorted(recipes_dir().rglob("*.yaml"))
    assert files, "no bundled recipes"
    for path in files:
        recipe = load_recipe(path)
        assert recipe.phases and recipe.backbone.name


def test_default_recipe_has_frozen_then_unfreeze_phase():
    recipe = load_recipe(task="image_classification")
    assert recipe.phases[0].unfreeze == "none"
    assert recipe.phases[-1].unfreeze not in ("none", [])
    assert recipe.phases[-1].learning_rate < recipe.phases[0].learning_rate


def test_unknown_key_names_key_and_suggests(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: image_classification\ndata:\n  batch_sise: 8\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "data.batch_sise" in msg and "data.batch_size" in msg and str(path) in msg


def test_wrong_type_names_key():
    with pytest.raises(RecipeError, match="phases.0.epochs' must be a number \(0 or more\) or auto"):
        from_dict({"phases": [{"epochs": "many"}]})
    with pytest.raises(RecipeError, match="optimizer.name' must be one of"):
        from_dict({"optimizer": {"name": "adamm"}})
    with pytest.raises(RecipeError, match="phases.0.batchnorm"):
        from_dict({"phases": [{"batchnorm": "sometimes"}]})


def test_overrides_apply_to_nested_keys_and_list_items():
    data = {"phases": [{"epochs": 1}, {"epochs": 2}], "data": {"batch_size": 4}}
    out = apply_overrides(data, ["phases.1.learning_rate=1e-5", "data.batch_size=16", "head.hidden=[64, 32]"])
    assert out["phases"][1]["learning_rate"] == 1e-5 and out["data"]["batch_size"] == 16
    assert out["head"]["hidden"] == [64, 32]
    assert data["data"]["batch_size"] == 4  # the input is not modified
    recipe = from_dict(out)
    assert recipe.phases[1].learning_rate == 1e-5 and recipe.head.hidden == [64, 32]
    with pytest.raises(RecipeError, match="must look like key.path=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(RecipeError, match="out of range"):
        apply_overrides({"phases": [{}]}, ["phases.5.epochs=1"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: image_classification\ndata: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad.yaml' is not valid YAML at line"):
        load_recipe(path)


def test_recipe_roundtrips_through_yaml(tmp_path):
    recipe = load_recipe(task="image_classification", overrides=["seed=7"])
    recipe.save(tmp_path / "r.yaml")
    again = load_recipe(tmp_path / "r.yaml")
    assert again.to_dict() == recipe.to_dict()


def test_a_bad_value_from_an_override_names_the_override_not_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: text_classification\ndata:\n  batch_size: 8\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides=["data.streaming=maybe"])
    assert str(err.value) == ("Key 'data.streaming' (--set data.streaming=maybe) must be one of auto, true, "
                              "false, got 'maybe'.")
    path.write_text("task: text_classification\ndata:\n  streaming: maybe\n")
    with pytest.raises(RecipeError, match=f"Key 'data.streaming' in {path} must be one of"):
        load_recipe(path, overrides=["data.batch_size=4"])


def test_choices_are_checked_at_any_depth_with_key_and_values():
    with pytest.raises(RecipeError, match=r"'data.augment.flip'.* must be one of none, horizontal, vertical, both, got 'sideways'"):
        from_dict({"data": {"augment": {"flip": "sideways"}}})
    with pytest.raises(RecipeError, match=r"'head.pooling'.* must be one of avg, max, flatten, none"):
        from_dict({"head": {"pooling": "bogus"}})
    with pytest.raises(RecipeError, match=r"'data.features.scale'.* must be one of"):
        from_dict({"task": "speech_classification", "data": {"features": {"scale": "loud"}}})
    with pytest.raises(RecipeError, match=r"'adaptation.method'.* must be one of none, auto, adabn, test_time_bn, dann, coral, mmd, entropy, self_training"):
        from_dict({"adaptation": {"method": "magic"}})
    with pytest.raises(RecipeError, match=r"'phases.0.epochs'.* must be 0 or more, got -1"):
        from_dict({"phases": [{"epochs": -1}]})
    with pytest.raises(RecipeError, match=r"'data.batch_size'.* must be 1 or more"):
        from_dict({"data": {"batch_size": 0}})


def test_wildcard_override_sets_every_phase_and_the_default_phase():
    recipe = from_dict({"phases": [{"epochs": 1}, {"epochs": 2}]}, overrides=["phases.*.epochs=7"])
    assert [p.epochs for p in recipe.phases] == [7, 7]
    assert [p.epochs for p in from_dict({}, overrides=["phases.*.epochs=3"]).phases] == [3]
    with pytest.raises(RecipeError, match="'seed' is not a list"):
        apply_overrides({"seed": 1}, ["seed.*=2"])


def test_flags_become_overrides_and_data_resets_the_recipes_own_splits(tmp_path):
    from tlmulti.cli.flags import TRAIN_FLAGS, overrides_from_flags

    out = overrides_from_flags({"data": "x", "epochs": 2, "holdout": ("accent=a",), "val_data": None,
                                "test_data": None}, TRAIN_FLAGS)
    assert "data.val=null" in out and "data.test=null" in out and "data.holdout=[]" not in out
    assert "phases.*.epochs=2" in out and 'data.holdout=["accent=a"]' in out
    recipe = from_dict({"data": {"val": "v", "test": "t", "holdout": ["a=b"]}}, overrides=out)
    assert recipe.data.val is None and recipe.data.test is None and recipe.data.holdout == ["accent=a"]
    assert recipe.data.train.endswith("/x") and [p.epochs for p in recipe.phases] == [2]


@pytest.mark.parametrize("args, text", [
    (["--set", "data.augment.flip=sideways"], "data.augment.flip'.* must be one of"),
    (["--set", "head.pooling=bogus"], "head.pooling'.* must be one of"),
    (["--epochs", "-1"], "phases.0.epochs'.* must be 0 or more"),
])
def test_cli_bad_values_are_one_line_errors(args, text, tmp_path):
    from click.testing import CliRunner

    from tlmulti.cli import main

    result = CliRunner().invoke(main, ["vision", "train", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and re.search(text, result.output) and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
