"""``tlmulti vision``: image classification (segmentation and object detection with ``--task``)."""

from tlmulti.cli.common import domain_group

vision = domain_group(
    "vision",
    "Image classification, segmentation and object detection: train, evaluate, predict.",
    default_task="image_classification",
    explain=True,
)
