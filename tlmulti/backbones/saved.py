"""Saving a trained backbone as a named local backbone.

A backbone trained by tlmulti (source-domain pretraining, or the backbone of any run) is saved
to ``$TLMULTI_HOME/backbones/NAME/`` as ``backbone.keras`` plus ``backbone.json`` (its spec: input
contract, layer groups, families). The registry lists it from then on, so recipes use it by name
like any preset.

Example::

    import tlmulti
    tlmulti.save_backbone(model, "my_cnn.source", families=("audio",),
                          input={"sample_rate": 16000}, layer_groups={"stem": ["conv0.*"]})
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tlmulti import paths, registry
from tlmulti.errors import RunError


def save_backbone(model, name: str, families=("vision",), input=None, layer_groups=None,
                  feature_layers=(), output_layer: str = "", description: str = "",
                  overwrite: bool = False) -> str:
    """Write ``model`` and its spec to the backbone store and register it; returns the folder."""
    import tlmulti.layers  # noqa: F401

    folder = paths.backbone_store() / name
    if folder.exists():
        if not overwrite:
            raise RunError(f"A saved backbone named '{name}' already exists in '{folder}'; "
                           "choose another name or pass overwrite.")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save(folder / "backbone.keras")
    spec = {"name": name, "families": list(families), "input": dict(input or {}),
            "layer_groups": {k: list(v) for k, v in (layer_groups or {}).items()},
            "feature_layers": list(feature_layers), "output_layer": output_layer,
            "description": description or f"saved backbone ({', '.join(families)})"}
    (folder / "backbone.json").write_text(json.dumps(spec, indent=2))
    registry.register_backbone(source="local", handle=str(folder / "backbone.keras"), replace=True, **spec)
    return str(folder)


def save_run_backbone(run_dir, name: str, overwrite: bool = False) -> str:
    """Save the (fine-tuned) backbone of a run folder under ``name``, with its spec's contract."""
    from tlmulti.runs import load_run

    recipe, task, model = load_run(run_dir)
    try:
        backbone = model.get_layer(_backbone_layer(model))
    except ValueError:
        raise RunError(f"Run '{run_dir}' has no backbone layer to save.") from None
    spec = registry.get_backbone(recipe.backbone.name)
    contract = dict(spec.input)
    return save_backbone(backbone, name, families=spec.families, input=contract,
                         layer_groups={k: list(v) for k, v in spec.layer_groups.items()},
                         feature_layers=spec.feature_layers, output_layer="",
                         description=f"fine-tuned from {spec.name} in {Path(run_dir).name}", overwrite=overwrite)


def _backbone_layer(model) -> str:
    for layer in model.layers:
        if layer.name == "backbone" or (hasattr(layer, "layers") and layer.name not in ("head", "augment")
                                        and layer.__class__.__name__ in ("Functional", "Model")):
            return layer.name
    raise ValueError("no backbone")
