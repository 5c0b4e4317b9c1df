"""Dice / IoU metrics and the segmentation loss against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tlmulti.evaluation import confusion, segmentation_metrics


def test_dice_and_iou_by_hand():
    truth = np.array([[0, 1, 1, 0],
                      [0, 1, 1, 0],
                      [2, 2, 0, 0]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 0],
                     [2, 0, 0, 0]])
    m = segmentation_metrics(confusion(truth, pred, 3), ["background", "cell", "membrane"])
    # cell: TP 3 (of 4 true), FP 1, FN 1 -> IoU 3/5, Dice 6/8
    assert m["per_class"]["cell"]["iou"] == pytest.approx(3 / 5)
    assert m["per_class"]["cell"]["dice"] == pytest.approx(6 / 8)
    # membrane: TP 1, FP 0, FN 1 -> IoU 1/2, Dice 2/3
    assert m["per_class"]["membrane"]["iou"] == pytest.approx(1 / 2)
    assert m["per_class"]["membrane"]["dice"] == pytest.approx(2 / 3)
    # background: TP 5, FP 2, FN 1 -> IoU 5/8
    assert m["per_class"]["background"]["iou"] == pytest.approx(5 / 8)
    assert m["mean_iou"] == pytest.approx((3 / 5 + 1 / 2) / 2)  # foreground classes only
    assert m["mean_dice"] == pytest.approx((6 / 8 + 2 / 3) / 2)
    assert m["mean_iou_with_background"] == pytest.approx((5 / 8 + 3 / 5 + 1 / 2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(9 / 12)
    assert m["per_class"]["cell"]["precision"] == pytest.approx(3 / 4)
    assert m["per_class"]["membrane"]["recall"] == pytest.approx(1 / 2)


def test_absent_class_is_left_out_of_the_mean():
    truth = np.array([[0, 1], [0, 1]])
    m = segmentation_metrics(confusion(truth, truth, 3), ["bg", "a", "never"])
    assert m["per_class"]["never"]["iou"] is None
    assert m["mean_iou"] == 1.0 and m["mean_dice"] == 1.0


def test_loss_is_low_for_right_and_high_for_wrong_predictions():
    from tlmulti.layers.segmentation import SegmentationLoss

    y = np.zeros((2, 6, 6), np.int32)
    y[:, 1:4, 2:5] = 1
    onehot = np.eye(2, dtype=np.float32)[y]
    good = onehot * 0.98 + 0.01
    bad = onehot[..., ::-1] * 0.98 + 0.01
    for mode in ("ce+dice", "ce", "dice"):
        loss = SegmentationLoss(2, mode)
        assert float(loss(y, good)) < 0.05
        assert float(loss(y, bad)) > 0.9
    # soft Dice by hand: foreground P = sum of p1, G = 18 pixels, intersection = 18 * 0.99
    p1 = good[..., 1]
    dice = (2 * (p1 * (y == 1)).sum() + 1) / (p1.sum() + 18 + 1)
    assert float(SegmentationLoss(2, "dice")(y, good)) == pytest.approx(1 - dice, rel=1e-5)
    ce = -np.log(0.99)
    assert float(SegmentationLoss(2, "ce")(y, good)) == pytest.approx(ce, rel=1e-5)


def test_loss_round_trips_its_config():
    from tlmulti.layers.segmentation import SegmentationLoss

    loss = SegmentationLoss(3, "ce", class_weights=[1.0, 2.0, 3.0])
    again = SegmentationLoss.from_config(loss.get_config())
    assert again.class_weights == [1.0, 2.0, 3.0] and again.mode == "ce"
