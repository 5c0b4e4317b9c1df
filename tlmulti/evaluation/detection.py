"""Detection metrics: COCO mAP by pycocotools, and the score threshold with the best F1.

Boxes are ``xyxy`` in each image's own pixels. ``coco_metrics`` builds the ground truth and the
detections as COCO objects in memory and runs ``COCOeval`` (bbox, 100 detections per image):
``map`` is mAP@[.5:.95], ``map50`` mAP@0.5, ``map75`` mAP@0.75, ``per_class`` each class's AP
and AP@0.5 (None for a class without a ground-truth box). ``threshold_curve`` matches detections
to boxes at IoU 0.5 (highest score first, each box at most once, same class) and gives
precision, recall and F1 at every score; ``best_threshold`` is the score where F1 peaks.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np


def coco_metrics(truth, detections, classes: list[str]) -> dict:
    """``truth``: per image ``(boxes (n, 4), labels (n,))``; ``detections``: per image
    ``(boxes (k, 4), scores (k,), labels (k,))``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (boxes, labels) in enumerate(truth):
        images.append({"id": i + 1})
        for b, c in zip(np.asarray(boxes, float).reshape(-1, 4), np.asarray(labels).reshape(-1)):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
    for i, (boxes, scores, labels) in enumerate(detections):
        for b, s, c in zip(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores).reshape(-1),
                           np.asarray(labels).reshape(-1)):
            results.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    n_boxes = np.bincount([a["category_id"] - 1 for a in annotations], minlength=len(classes))
    out = {"map": 0.0, "map50": 0.0, "map75": 0.0, "n_images": len(truth), "n_boxes": int(n_boxes.sum()),
           "n_detections": len(results),
           "per_class": {c: {"ap": None, "ap50": None, "boxes": int(n)} for c, n in zip(classes, n_boxes)}}
    if not annotations:
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}
        gt.createIndex()
        if not results:
            return out
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out.update(map=_nonneg(ev.stats[0]), map50=_nonneg(ev.stats[1]), map75=_nonneg(ev.stats[2]))
    precision = ev.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    for k, c in enumerate(classes):
        if n_boxes[k] == 0:
            continue
        p = precision[:, :, k, 0, -1]
        out["per_class"][c]["ap"] = _mean_valid(p)
        out["per_class"][c]["ap50"] = _mean_valid(p[0])
    return out


def _nonneg(v) -> float:
    return round(max(float(v), 0.0), 6)


def _mean_valid(p) -> float:
    p = np.asarray(p)
    valid = p[p > -1]
    return round(float(valid.mean()), 6) if valid.size else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of xyxy boxes."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(truth, detections, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """``(scores, hits, n_boxes)`` over all images: each detection's score and whether it found
    a box not found by a higher-scored detection (same class, IoU >= ``iou``)."""
    scores, hits, total = [], [], 0
    for (gb, gl), (db, ds, dl) in zip(truth, detections):
        gb, gl = np.asarray(gb, float).reshape(-1, 4), np.asarray(gl).reshape(-1)
        db, ds, dl = np.asarray(db, float).reshape(-1, 4), np.asarray(ds, float).reshape(-1), np.asarray(dl).reshape(-1)
        total += len(gb)
        order = np.argsort(-ds, kind="stable")
        taken = np.zeros(len(gb), bool)
        ious = box_iou(db, gb) if len(gb) and len(db) else np.zeros((len(db), len(gb)))
        for j in order:
            ok = (gl == dl[j]) & ~taken & (ious[j] >= iou)
            hit = bool(ok.any())
            if hit:
                taken[np.argmax(np.where(ok, ious[j], -1.0))] = True
            scores.append(ds[j])
            hits.append(hit)
    return np.asarray(scores, float), np.asarray(hits, bool), total


def threshold_curve(truth, detections, iou: float = 0.5) -> dict:
    """Precision, recall and F1 at each detection score (descending), and the best-F1 score."""
    scores, hits, total = match(truth, detections, iou)
    if not len(scores) or not total:
        return {"scores": [], "precision": [], "recall": [], "f1": [], "best_threshold": 0.5,
                "best_f1": 0.0, "precision_at_best": 0.0, "recall_at_best": 0.0}
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], hits[order]
    tp = np.cumsum(h)
    precision = tp / np.arange(1, len(h) + 1)
    recall = tp / total
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every detection of its score
    best = int(np.flatnonzero(last)[np.argmax(f1[last])])
    return {"scores": s.tolist(), "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "best_threshold": round(float(s[best]), 6), "best_f1": round(float(f1[best]), 6),
            "precision_at_best": round(float(precision[best]), 6), "recall_at_best": round(float(recall[best]), 6)}


def anchor_coverage(anchors, image_size, boxes) -> float | None:
    """Share of ``boxes`` (xyxy network pixels) with an anchor of IoU >= 0.5."""
    if boxes is None or not len(boxes):
        return None
    grid = np.asarray(anchors.anchors(image_size))
    best = np.zeros(len(boxes))
    for start in range(0, len(boxes), 256):
        best[start:start + 256] = box_iou(boxes[start:start + 256], grid).max(axis=1)
    return round(float((best >= 0.5).mean()), 4)
