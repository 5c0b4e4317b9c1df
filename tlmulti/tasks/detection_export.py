"""What an object detection export answers, and how the export check measures it.

A SavedModel export keeps the run's suppression inside: ``boxes``, ``scores``, ``classes`` and
``num_detections`` (network pixels). The TFLite and ONNX runtimes lack the operations of
keras-hub's suppression loop, so those files return every anchor's decoded box and sigmoid class
scores; the export check applies the run's own suppression to them
(:meth:`~tlmulti.layers.detection.DecodeDetections.select`: each anchor's best class,
class-agnostic non-maximum suppression at ``head.iou_threshold``, up to ``head.max_detections``,
score threshold 0 as in evaluation).

The check scores the export's and the run's detections on the same validation examples with the
task's COCO evaluation, in each image's own pixels as ``evaluate`` does: mAP@0.5 (``map50``, the
measured metric) and mAP@[.5:.95] (``map``). Its ``agreement`` is the share of the run's
detections at the run's score threshold (0.5 where the run has none) that the export finds at
that threshold too: same class, IoU >= :data:`AGREEMENT_IOU`; ``max_abs_diff`` is the largest
score difference of those pairs.
"""

from __future__ import annotations

import numpy as np

#: IoU of a run detection and the export's detection that finds it.
AGREEMENT_IOU = 0.9


class DetectionExport:
    """Object detection's export methods and export check (mixed in before the image export)."""

    def export_model(self, serving, fmt: str):
        """SavedModel: boxes, scores, class ids and counts after non-maximum suppression (score
        threshold 0). TFLite and ONNX, whose runtimes lack the suppression's operations (bitwise
        and bitcast ops in keras-hub's loop): every anchor's box and class scores."""
        import keras

        decode = self.decoder(serving, suppress=fmt == "saved_model")
        return keras.Model(serving.inputs[0], decode(serving.outputs[0]), name="exported"), {}

    def export_signature(self, serving, fmt: str):
        inputs, prep = self.export_inputs(serving, fmt)
        outputs = self.export_outputs()
        if fmt != "saved_model":
            outputs = {"boxes": "float32 (batch, anchors, 4): x_min, y_min, x_max, y_max in network pixels, one per anchor",
                       "scores": "float32 (batch, anchors, classes): sigmoid scores; keep the best class per anchor "
                                 f"and apply non-maximum suppression at IoU {self.recipe.head.iou_threshold}",
                       "score_threshold": self.threshold}
        return inputs, outputs, prep

    def export_inputs(self, serving, fmt: str):
        h, w = self.image_size()
        c = self.channels()
        inputs = {"image": {"dtype": "float32", "shape": [1 if fmt == "tflite" else None, h, w, c], "range": [0, 255],
                            "note": f"raw pixels resized to {w}x{h}; boxes come back in these pixels: multiply x by "
                                    f"input_width / {w} and y by input_height / {h}"}}
        return inputs, {"resize_to": [h, w], "channels": c, "normalization": self.spec.input.get("normalization", "unit")}

    def export_outputs(self) -> dict:
        k = self.recipe.head.max_detections
        return {"boxes": f"float32 (batch, {k}, 4): x_min, y_min, x_max, y_max in network pixels, -1 past num_detections",
                "scores": f"float32 (batch, {k})", "classes": f"int32 (batch, {k}): ids as in labels.txt",
                "num_detections": "int32 (batch,)",
                "score_threshold": self.threshold}

    def onnx_signature(self, serving):
        import tensorflow as tf

        h, w = self.image_size()
        return (tf.TensorSpec((None, h, w, self.channels()), tf.float32, name="image"),)

    # -- the export check ------------------------------------------------------------------------------
    def export_detections(self, model, predict, x, batch_size: int = 32) -> tuple[list[tuple], bool]:
        """``(detections, suppressed here)``: per image ``(boxes (k, 4) xyxy network pixels, scores
        (k,), class ids (k,))`` of the export's ``predict`` on ``x``, its own after suppression
        (SavedModel), or with the run's suppression applied here to every anchor's box and scores
        (TFLite, ONNX). ``model``: the run's model, whose outputs give the anchors."""
        decode, out = None, []
        for start in range(0, len(x), batch_size):
            got = predict(x[start:start + batch_size])
            if "num_detections" not in got:
                decode = decode or self.decoder(model)
                boxes, scores = (got["boxes"], got["scores"]) if {"boxes", "scores"} <= set(got) \
                    else list(got.values())[:2]  # named otherwise: the exported model's order, boxes first
                got = decode.select(boxes, scores, from_logits=False)
            n = np.asarray(got["num_detections"]).astype(int).reshape(-1)
            boxes, scores, labels = (np.asarray(got[k]) for k in ("boxes", "scores", "classes"))
            out += [(boxes[i, :n[i]], scores[i, :n[i]], labels[i, :n[i]].astype(int)) for i in range(len(n))]
        return out, decode is not None

    def export_check_scores(self, model, predict, x, keras_x, examples) -> dict:
        """mAP@0.5 of the run's ``model`` (on ``keras_x``) and of the export (``predict`` on ``x``)
        on ``examples``, with mAP@[.5:.95] and the detection agreement (see the module)."""
        from tlmulti.evaluation.detection import coco_metrics

        sizes = examples.meta["size"]
        truth = self.truth(examples)
        ref = self.detect(model, keras_x, sizes=sizes)
        got, suppressed = self.export_detections(model, predict, x)
        got = self.in_image_pixels(got, sizes)
        run, export = coco_metrics(truth, ref, examples.classes), coco_metrics(truth, got, examples.classes)
        threshold = 0.5 if self.threshold is None else float(self.threshold)
        agreement, diff, n = detection_agreement(ref, got, threshold)
        head = self.recipe.head
        return {"metric": "map50", "run": run["map50"], "export": export["map50"], "agreement": agreement,
                "agreement_of": "detection", "max_abs_diff": diff,
                "map": {"run": run["map"], "export": export["map"]}, "score_threshold": round(threshold, 6),
                "agreement_on": f"{n} run detections scoring at least {threshold:.4f}; found: the export has one "
                                f"at that score, of the same class, at IoU >= {AGREEMENT_IOU}",
                "suppression": (f"the run's, applied to the export's outputs: best class per anchor, class-agnostic "
                                f"at IoU {head.iou_threshold}, up to {head.max_detections}") if suppressed else None}


def detection_agreement(ref, got, threshold: float, iou: float = AGREEMENT_IOU) -> tuple[float, float | None, int]:
    """``(share found, largest score difference of the pairs or None, run detections)``: of the
    ``ref`` detections scoring at least ``threshold``, those ``got`` has a detection for (at that
    score, same class, IoU >= ``iou``); per image ``(boxes, scores, class ids)``."""
    from tlmulti.evaluation.detection import box_iou

    found, total, diffs = 0, 0, []
    for (rb, rs, rl), (gb, gs, gl) in zip(ref, got):
        r, g = np.asarray(rs) >= threshold, np.asarray(gs) >= threshold
        total += int(r.sum())
        if not r.any() or not g.any():
            continue
        ious = box_iou(np.asarray(rb)[r], np.asarray(gb)[g])
        ious = np.where(np.asarray(rl)[r][:, None] == np.asarray(gl)[g][None, :], ious, -1.0)
        hit = ious.max(axis=1) >= iou
        found += int(hit.sum())
        best = ious.argmax(axis=1)
        diffs += list(np.abs(np.asarray(rs)[r][hit] - np.asarray(gs)[g][best[hit]]))
    share = found / total if total else 1.0
    return round(float(share), 6), (round(float(max(diffs)), 6) if diffs else None), total
