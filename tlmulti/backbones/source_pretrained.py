"""Source ``source_pretrained``: a backbone that tlmulti pretrains itself on a source recipe.

Where no pretrained weights install offline, a backbone can be trained once on a large related
source task (``options.recipe``, e.g. 169 synthetic words for speech) and transferred from
then on. This source only loads: the saved ``$TLMULTI_HOME/backbones/<name>/backbone.keras``,
or ``options.architecture`` (``"module:function"``, a builder) with random weights for
``weights: random``. Pretraining itself is training, so it lives in
:mod:`tlmulti.training.pretrain`: ``tlmulti audio pretrain`` runs it, and so does the trainer
before a run whose backbone is missing (before the run's seed is set, so a first run on a
machine gives the same result as later ones).
"""

from __future__ import annotations

from pathlib import Path

from tlmulti import paths
from tlmulti.backbones._store import RANDOM
from tlmulti.errors import MissingWeightsError
from tlmulti.registry import resolve


def saved_path(spec) -> Path:
    return paths.backbone_store() / spec.name / "backbone.keras"


def status(spec) -> tuple[bool, str]:
    path = saved_path(spec)
    return path.is_file(), str(path) if path.is_file() else f"{path} (built by '{pretrain_command(spec)}')"


def pretrain_command(spec) -> str:
    return spec.options.get("pretrain_command", "tlmulti audio pretrain") + f" --name {spec.name}"


def load(spec, weights, input_shape):
    if weights == RANDOM:
        return resolve(spec.options["architecture"])(spec, RANDOM, input_shape)
    path = Path(weights) if weights else saved_path(spec)
    if not path.exists():
        raise MissingWeightsError(
            f"Backbone '{spec.name}' is pretrained by tlmulti on the source recipe "
            f"{spec.options.get('recipe', '?')} and is not built on this machine yet (looked for {path}). "
            f"Run '{pretrain_command(spec)}' once (training a recipe that uses it does this first), "
            "or use --set backbone.weights=random to train the same architecture from scratch."
        )
    from tlmulti.backbones.local import load_file

    return load_file(path, input_shape)
