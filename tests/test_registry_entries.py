"""Every registry entry, tested the moment it is registered: backbones, tasks, datasets.

A backbone whose architecture can be built offline is built (random weights, small input) and
every layer group must match a layer and every skip layer must exist; one that cannot (hub
handles) must say so: not available offline, and a MissingWeightsError naming it.
"""

from __future__ import annotations

import pytest

from tlmulti import registry
from tlmulti.errors import MissingWeightsError, TlmultiError

registry._ensure_builtins()
BACKBONES = sorted(s.name for s in registry.list_backbones())
TASKS = sorted(s.name for s in registry.list_tasks())
DATASETS = sorted(s.name for s in registry.list_datasets())


def _input_shape(spec):
    if "vision" in spec.families or "segmentation" in spec.families:
        return (64, 64, int(spec.input.get("channels", 3)))
    if "audio" in spec.families:
        if spec.input.get("frontend", "log_mel") == "log_mel":
            return (101, int(spec.input.get("n_mels", 40)))
        return (16000,)
    return None


def _layer_names(model):
    return [l.name for l in model.layers]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_builds_offline_or_says_why(name):
    import re

    import keras

    from tlmulti.backbones import load_backbone, weights_status

    spec = registry.get_backbone(name)
    assert spec.source in registry.sources() and spec.families and spec.description
    available, where = weights_status(spec)
    assert isinstance(available, bool) and where
    keras.backend.clear_session()
    try:
        model = load_backbone(spec, weights="random", input_shape=_input_shape(spec))
    except MissingWeightsError as exc:  # needs a download even for its architecture (hub presets)
        assert name in str(exc) and not available
        return
    except TlmultiError as exc:  # TF-Hub: a graph, not an architecture
        assert spec.source == "tfhub" and "random" in str(exc) and not available
        return
    names = _layer_names(model)
    for group, patterns in spec.layer_groups.items():
        regex = re.compile("|".join(f"(?:{p})" for p in patterns))
        assert any(regex.fullmatch(n) for n in names), f"group {group} matches nothing"
    if spec.feature_layers:
        cut = load_backbone(spec, weights="random", input_shape=_input_shape(spec),
                            feature_layers=spec.feature_layers)
        assert len(cut.outputs) == len(spec.feature_layers)


def test_a_group_that_matches_nothing_is_an_error():
    from tests.builders import build_tiny_cnn
    from tlmulti.backbones import load_backbone
    from tlmulti.errors import RegistryError

    spec = registry.register_backbone(
        "typo_groups.test", source="builder", families=("vision",), builder=build_tiny_cnn,
        layer_groups={"block1": ["block1_.*"], "top": ["blok3_.*"]}, replace=True)
    try:
        with pytest.raises(RegistryError, match="layer group 'top' \\(blok3_.\\*\\) matches no layer"):
            load_backbone(spec, input_shape=(16, 16, 3))
    finally:
        registry.unregister_backbone("typo_groups.test")


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_a_valid_default_recipe_and_backbone(name):
    from tlmulti.recipe import load_recipe
    from tlmulti.tasks import task_class

    spec = registry.get_task(name)
    cls = task_class(name)
    assert cls.name == name and cls.family == spec.family
    backbone = registry.get_backbone(spec.default_backbone)
    assert spec.family in backbone.families or name in backbone.families
    recipe = load_recipe(task=name)
    assert recipe.task == name and recipe.phases
    cls(recipe)  # the default recipe's values pass the task's own checks


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_names_its_builder_splits_and_source(name):
    spec = registry.get_dataset(name)
    assert callable(registry.resolve(spec.builder))
    assert spec.splits and all(s and "/" not in s for s in spec.splits)
    assert spec.description and spec.source


def test_bundled_recipes_name_registered_datasets_and_splits():
    import yaml

    from tlmulti.recipe import recipes_dir

    for path in sorted(recipes_dir().rglob("*.yaml")):
        text = yaml.safe_load(path.read_text())
        refs = [v for section in ("data", "adaptation") for v in (text.get(section) or {}).values()
                if isinstance(v, str) and v.startswith("dataset:")]
        for ref in refs:
            name, _, split = ref[len("dataset:"):].partition("/")
            assert split in registry.get_dataset(name).splits, f"{path.name}: {ref}"
