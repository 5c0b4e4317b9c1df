"""Source-domain pretraining: train a backbone on a large related task and save it by name.

Where no pretrained weights install offline (speech, here), the honest way to transfer is to
pretrain on a source task first: ``recipes/audio/source_pretrain.yaml`` trains the compact
log-mel CNN on 169 synthetic words by 7 espeak-ng accents, and :func:`pretrain` saves its
backbone with :func:`tlmulti.save_backbone`, so recipes use it by name like any preset. Any
domain can do the same with its own recipe.

A backbone of source ``source_pretrained`` names its source recipe; :func:`ensure_source_backbone`
builds it when it is missing. :func:`train` (``tlmulti.train``) calls it before a run starts
(before that run's seed is set), so the first run on a machine gives the same metrics as later ones.

Example::

    import tlmulti
    from tlmulti.training.pretrain import pretrain
    recipe = tlmulti.load_recipe("recipes/audio/source_pretrain.yaml")
    run, folder = pretrain(recipe, "audio_cnn.my_source")
"""

from __future__ import annotations

import sys
import time

from tlmulti import paths, registry
from tlmulti.errors import RegistryError, TlmultiError
from tlmulti.training.trainer import Run, train_on, workers_for


def train(recipe, out=None) -> Run:
    """Train ``recipe`` end to end and write the run folder (never overwriting one).

    A backbone pretrained by tlmulti on a source recipe is built first when it is missing
    (:func:`ensure_source_backbone`), before this run's folder and seed, so it does not change
    this run. A failure before the first epoch leaves nothing behind; after it, the folder is
    kept with status ``failed`` (or ``interrupted`` for Ctrl-C / SIGTERM, raised as
    :class:`tlmulti.training.trainer.RunInterrupted`) and ``tlmulti resume`` continues it from
    its last checkpoint."""
    place = workers_for(recipe)  # a multi-worker strategy starts before any other TensorFlow work
    try:
        ensure_source_backbone(registry.get_backbone(recipe.backbone.name))
    except RegistryError:
        pass  # a handle or folder a task registers itself (text backbones), or a name the task rejects
    return train_on(recipe, place, out=out)


def pretrain(recipe, name: str, out=None, overwrite: bool = False, description: str = ""):
    """Train ``recipe`` with the shared trainer and save its backbone as local backbone ``name``.

    Returns ``(run, folder)``: the training run (metrics of the source task) and the saved
    backbone's folder. The backbone keeps the recipe backbone's input contract and layer groups.
    """
    from tlmulti.backbones.local import save_backbone

    folder = paths.backbone_store() / name
    if not overwrite and (folder / "backbone.keras").exists():
        raise TlmultiError(f"A saved backbone named '{name}' already exists in '{folder}'; "
                           "choose another --name or pass --overwrite.")
    spec = registry.get_backbone(recipe.backbone.name)
    run = train(recipe, out=out)
    backbone = run.model.get_layer("backbone")
    val = (run.metrics.get("val") or {}).get("accuracy", float("nan"))
    text = description or (
        f"{spec.name} pretrained on {run.metrics['data']['classes']} source classes "
        f"({recipe.data.train}; source val accuracy {val:.3f})"
    )
    saved = save_backbone(backbone, name, families=spec.families, input=dict(spec.input),
                          layer_groups={k: list(v) for k, v in spec.layer_groups.items()},
                          description=text, overwrite=True)
    return run, saved


def ensure_source_backbone(spec) -> None:
    """Pretrain ``spec`` on its source recipe when it is a ``source_pretrained`` backbone that is
    not built on this machine yet; otherwise do nothing."""
    from tlmulti.backbones import weights_status

    if spec.source != "source_pretrained" or weights_status(spec)[0]:
        return
    from tlmulti.recipe import load_recipe, recipes_dir

    recipe_file = spec.options["recipe"]
    print(f"[tlmulti] Backbone '{spec.name}' is not built on this machine yet: pretraining it once on the "
          f"source recipe {recipe_file} (synthesis and training take a few minutes on a CPU); later runs "
          "load the saved backbone.", file=sys.stderr, flush=True)
    out = paths.home() / "pretrain" / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    pretrain(load_recipe(recipes_dir() / recipe_file), spec.name, out=out, overwrite=True)
