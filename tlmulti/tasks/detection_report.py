"""What report.html and the run folder show of a detector: the precision-recall curves and the
images with the most missed boxes, true boxes beside predicted ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class DetectionReport:
    """Report parts of :class:`~tlmulti.tasks.object_detection.ObjectDetection` (which gives
    ``truth``, ``detect``, ``image_size`` and ``threshold``)."""

    def report(self, run_dir, model, examples, metrics) -> list[str]:
        """``pr_curve.png``: precision-recall per class at IoU 0.5 (test set)."""
        from tlmulti.evaluation.detection import threshold_curve
        from tlmulti.reports.plots import plot_precision_recall

        truth = self.truth(examples)
        dets = self.detect(model, examples.x, sizes=examples.meta["size"])
        curves = {}
        for k, name in enumerate(examples.classes):
            c = threshold_curve([(b[l == k], l[l == k]) for b, l in truth], [(b[l == k], s[l == k], l[l == k]) for b, s, l in dets])
            pts = [i for i, s in enumerate(c["scores"]) if s >= (self.threshold or 0.0)]
            curves[name] = {"precision": c["precision"], "recall": c["recall"],
                            "ap50": (metrics.get("per_class", {}).get(name) or {}).get("ap50") or 0.0,
                            "at": (c["recall"][pts[-1]], c["precision"][pts[-1]]) if pts else None}
        plot_precision_recall(curves, Path(run_dir) / "pr_curve.png")
        return ["pr_curve.png"]

    def worst_examples(self, model, examples, k: int = 16) -> list[dict]:
        """Images with the most missed boxes first (then the most false detections), as panels of
        the true boxes beside the predicted ones (at the score threshold)."""
        from tlmulti.evaluation.detection import match
        from tlmulti.reports.overlays import box_panel, class_colours

        if examples.y is None:
            return []
        truth = self.truth(examples)
        dets = self.detect(model, examples.x, sizes=examples.meta["size"])
        thr = self.threshold or 0.0
        h, w = self.image_size()
        scored = []
        for i, ((gb, gl), (b, s, l)) in enumerate(zip(truth, dets)):
            keep = s >= thr
            _, hits, total = match([(gb, gl)], [(b[keep], s[keep], l[keep])])
            missed, false = total - int(hits.sum()), int((~hits).sum())
            scored.append((-missed, -false, i))
        scored.sort()
        colours = class_colours(examples.classes)
        out = []
        for neg_missed, neg_false, i in scored[:k]:
            size = examples.meta["size"][i]
            to_net = np.array([w / size[1], h / size[0]] * 2)
            b, s, l = dets[i]
            keep = s >= thr
            panel = box_panel(examples.x[i], (b[keep] * to_net, l[keep], s[keep]),
                              (truth[i][0] * to_net, truth[i][1]), colours)
            out.append({"name": Path(examples.meta["path"][i]).name, "true": f"{len(truth[i][0])} boxes",
                        "predicted": f"{int(keep.sum())} boxes, {-neg_missed} missed, {-neg_false} false",
                        "probability": 1.0 - (-neg_missed) / max(len(truth[i][0]), 1), "loss": float(-neg_missed),
                        "kind": "image",
                        "image": np.asarray(panel)})
        return out
