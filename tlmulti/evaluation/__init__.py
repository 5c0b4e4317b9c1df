"""Metric functions the tasks compute with, one module per kind of prediction (plots and other
reports: :mod:`tlmulti.reports`). A task's ``evaluate`` chooses among them; a new kind of
prediction adds its own module here.

Example::

    from tlmulti.evaluation import classification_metrics
    m = classification_metrics([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], ["a", "b"])
    print(m["accuracy"], m["macro_f1"])
"""

from tlmulti.evaluation.classification import (auroc, calibration, classification_metrics, clinical_metrics,
                                               grouped_accuracy, youden_threshold)
from tlmulti.evaluation.multilabel import best_f1_threshold, multilabel_metrics
from tlmulti.evaluation.segmentation import confusion, segmentation_metrics

__all__ = ["auroc", "best_f1_threshold", "calibration", "classification_metrics", "clinical_metrics", "confusion",
           "grouped_accuracy", "multilabel_metrics", "segmentation_metrics", "youden_threshold"]
