"""``tlmulti vision``: image classification (and segmentation with ``--task segmentation``)."""

from tlmulti.cli.common import domain_group

vision = domain_group(
    "vision",
    "Image classification and segmentation: train, evaluate, predict.",
    default_task="image_classification",
)
