"""Object detection: a RetinaNet head (keras-hub's feature pyramid and prediction heads) over a
pretrained encoder's stride 8/16/32 features, trained by the shared trainer.

Data is a COCO JSON file, a Pascal VOC folder or a YOLO folder (:mod:`tlmulti.data.boxes`);
images are read like classification's (PNG/JPEG, 8/16-bit TIFF, DICOM; percentiles for anything
wider than 8 bits) and resized to the network size with their boxes. Without ``data.image_size``
the size comes from the training images (their median shape scaled so the longer side is 256 to
640 px, multiples of 32); without ``head.anchor_size`` / ``head.max_level`` the anchors come from
the training boxes (the smallest anchor near the 5th percentile of box sides, the largest above
the largest box). Both are written into the saved recipe.

Phase 1 trains the pyramid and heads on cached encoder features; later phases unfreeze the top
encoder groups, with flips and scale jitter that move the boxes with the pixels. Predictions go
through keras-hub's non-maximum suppression; ``evaluate`` reports COCO mAP@[.5:.95], mAP@0.5 and
per-class AP (pycocotools) in each image's own pixels, and precision / recall / F1 at the score
threshold chosen for the best F1 on the validation data (saved with the run). Exports, and how
the export check scores them with the same mAP, are in :mod:`tlmulti.tasks.detection_export`.

Example::

    import tlmulti
    recipe = tlmulti.load_recipe("recipes/vision/nuclei_detection.yaml")
    run = tlmulti.train(recipe, out="runs/nuclei-boxes")
    print(run.metrics["test"]["map50"])
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tlmulti.data import Examples
from tlmulti.errors import DataError, RecipeError, TlmultiError
from tlmulti.reports.view import ReportView
from tlmulti.tasks.base import ModelParts, Task, resolve_groups
from tlmulti.tasks.detection_export import DetectionExport
from tlmulti.tasks.detection_report import DetectionReport
from tlmulti.tasks.image_classification import ImageTaskMixin

#: The network's longer side without ``data.image_size``: the training images' median, within this range.
SIZE_RANGE = (256, 640)
#: Below this side (network pixels, 5th percentile of the training boxes) anchors start at stride
#: 4 where the encoder has such a feature: a stride-8 grid cannot place an anchor within IoU 0.5
#: of every box that small.
SMALL_BOX = 16.0


class ObjectDetection(DetectionReport, DetectionExport, ImageTaskMixin, Task):
    name, family, primary_metric, tta_output = "object_detection", "vision", "map50", "boxes"
    report_view = ReportView(
        metric_rows=(("mAP@[.5:.95]", "map"), ("mAP@0.5", "map50"), ("mAP@0.75", "map75"),
                     ("precision at the score threshold", "precision"), ("recall at the score threshold", "recall"),
                     ("F1 at the score threshold", "f1"), ("score threshold", "score_threshold"),
                     ("images", "n_images"), ("boxes", "n_boxes")),
        per_class_columns=("ap", "ap50", "boxes"), per_class_score="ap50", confusion_kind="",
        figures=(("Precision-recall per class (test, IoU 0.5); the dot is the score threshold", "pr_curve.png"),))
    classes: list[str] = []
    scores_boxes = True  # predict takes score_threshold
    # BatchNorm statistics only: the training methods and ``auto`` act on class predictions
    adaptation_methods = ("adabn", "test_time_bn")
    label_free_score = False
    #: Detections with a lower score are dropped by ``predict`` (and counted as misses by
    #: precision / recall): the best-F1 score on the validation data unless given.
    threshold = None

    def __init__(self, recipe, spec=None):
        super().__init__(recipe, spec)
        self._records: dict[str, tuple] = {}
        self._train_sides = None
        data = recipe.data
        where = f" in {recipe.source}" if recipe.source else ""
        for key in ("limit_per_class", "group_column", "split_by", "positive_class", "threshold", "class_weight"):
            if getattr(data, key, None):
                raise RecipeError(f"Key 'data.{key}'{where} does not apply to object detection; remove it.")
        if data.holdout:
            raise RecipeError(f"Key 'data.holdout'{where} does not apply to object detection; use --test-data.")
        if data.image_size and (len(data.image_size) not in (1, 2) or min(data.image_size) < 32):
            raise RecipeError(f"Key 'data.image_size'{where} must be [size] or [height, width] of at least 32 px, "
                              f"got {data.image_size}.")
        if len(data.augment.scale) not in (0, 2) or (data.augment.scale and not 0 < data.augment.scale[0] <= data.augment.scale[1]):
            raise RecipeError(f"Key 'data.augment.scale'{where} must be [low, high] with 0 < low <= high, or [], "
                              f"got {data.augment.scale}.")

    # -- reading -------------------------------------------------------------------------------
    def _read_records(self, ref, classes=None):
        from tlmulti.data.boxes import read_boxes
        from tlmulti.data.manifest import resolve_source

        key = (str(ref), tuple(classes) if classes else None)
        if key not in self._records:
            source = resolve_source(str(ref)) if str(ref).startswith("dataset:") else ref
            self._records[key] = read_boxes(source, classes)
        return self._records[key]

    def read_split(self, ref, classes=None):
        """``(box records, classes)``: nothing decoded until :meth:`to_examples`."""
        records, found = self._read_records(ref, classes)
        return list(records), list(found)

    def split_validation(self, records, fraction: float, seed: int):
        from tlmulti.data import stratified_split

        keep, val = stratified_split(self._image_labels(records), fraction, seed)
        return [records[i] for i in keep], [records[i] for i in val]

    @staticmethod
    def _image_labels(records) -> np.ndarray:
        """One label per image for stratified splits: its most frequent class, -1 without boxes."""
        return np.array([np.bincount(r.labels).argmax() if len(r.labels) else -1 for r in records])

    def stratify_labels(self, examples):
        y = np.asarray(examples.y)
        return np.array([int(np.bincount(t[t[:, 4] >= 0, 4].astype(int)).argmax()) if (t[:, 4] >= 0).any() else -1
                         for t in y])

    def to_examples(self, records, classes) -> Examples:
        from tlmulti.data.boxes import load_detection_images, scale_targets

        size = self.image_size()
        x = load_detection_images(records, size, self.channels(), **self.intensity())
        y = scale_targets(records, size, self.recipe.data.max_boxes or None)
        return Examples(x=x, y=y, classes=list(classes),
                        meta={"path": [str(r.path) for r in records], "size": [tuple(r.size) for r in records]})

    def read(self, ref, classes=None, labelled=True) -> Examples:
        """Boxes from COCO / VOC / YOLO; unlabelled (adaptation targets), images without boxes."""
        if labelled:
            return self.to_examples(*self.read_split(ref, classes))
        x, names, sizes = self.read_inputs([str(ref)])
        return Examples(x=x, y=None, classes=list(classes or self.classes), meta={"path": names, "size": sizes})

    def read_inputs(self, items):
        from tlmulti.data.boxes import image_size as header_size
        from tlmulti.data.images import image_files, load_files

        files = [f for item in items for f in image_files(item)]
        x, origin = load_files(files, self.image_size(), self.channels(), **self.intensity())
        counts = np.bincount(origin, minlength=len(files))
        names, sizes, seen = [], [], {}
        shapes = {i: header_size(files[i]) for i in set(origin.tolist())}
        for i in origin:
            k = seen[i] = seen.get(i, -1) + 1
            names.append(str(files[i]) if counts[i] == 1 else f"{files[i]}#slice{k}")
            sizes.append(shapes[i])
        return x, names, sizes

    # -- sizes derived from the data ----------------------------------------------------------------
    def derive_defaults(self) -> None:
        """``data.image_size`` from the training images' shapes, when not given (see the module)."""
        data = self.recipe.data
        if not data.train:
            return
        records, _ = self._read_records(data.train)
        if not records:
            raise DataError(f"'{data.train}' lists no images.")
        if not data.image_size:
            h = float(np.median([r.size[0] for r in records]))
            w = float(np.median([r.size[1] for r in records]))
            f = min(max(max(h, w), SIZE_RANGE[0]), SIZE_RANGE[1]) / max(h, w)
            data.image_size = [int(math.ceil(h * f / 32) * 32), int(math.ceil(w * f / 32) * 32)]
        H, W = self.image_size()
        sides = [np.sqrt((b[:, 2] - b[:, 0]) * W / r.size[1] * (b[:, 3] - b[:, 1]) * H / r.size[0])
                 for r in records for b in [np.asarray(r.boxes, float).reshape(-1, 4)] if len(b)]
        self._train_sides = np.concatenate(sides) if sides else None

    def anchors(self, min_level: int = 3):
        """The run's :class:`~tlmulti.layers.detection.AnchorConfig`; ``auto`` values are derived
        from the training boxes and written into the recipe."""
        from tlmulti.layers.detection import AnchorConfig

        head = self.recipe.head
        sides = self._train_sides
        ns = int(head.num_scales)
        if head.anchor_size == "auto":
            low = float(np.percentile(sides, 5)) if sides is not None and len(sides) else 32.0
            head.anchor_size = round(min(max(low / 2 ** min_level, 0.5), 8.0), 3)
        if head.max_level == "auto":
            high = float(sides.max()) if sides is not None and len(sides) else max(self.image_size()) / 2
            top = high / (float(head.anchor_size) * 2 ** ((ns - 1) / ns))
            head.max_level = int(min(max(math.ceil(math.log2(max(top, 1.0))), 5, min_level), 7))
        if int(head.max_level) < min_level:
            raise RecipeError(f"Key 'head.max_level' ({head.max_level}) is below the encoder's first pyramid level "
                              f"({min_level}); raise it or set it to auto.")
        return AnchorConfig(min_level=min_level, max_level=int(head.max_level), num_scales=ns,
                            aspect_ratios=[float(a) for a in head.aspect_ratios], anchor_size=float(head.anchor_size))

    _coverage = None

    def input_summary(self, train, parts=None) -> dict:
        from tlmulti.data.boxes import box_summary

        records, _ = self._read_records(self.recipe.data.train)
        h, w = self.image_size()
        out = {"boxes": box_summary(records, train.classes), "network_input": f"{w}x{h}x{self.channels()}"}
        if parts is not None and getattr(parts, "anchor_config", None) is not None:
            a = parts.anchor_config
            out["anchors"] = {"sides_px": [round(s, 1) for s in a.sizes()], "levels": [a.min_level, a.max_level],
                              "coverage_iou50": self._coverage}
        return out

    # -- model ---------------------------------------------------------------------------------------
    def load_backbone(self, input_shape=None, feature_layers=None):
        from tlmulti.backbones import load_backbone

        return load_backbone(self.spec, weights=self.recipe.backbone.weights, input_shape=input_shape,
                             output_layer=None if self.spec.feature_layers else self.recipe.backbone.output_layer,
                             feature_layers=tuple(self.spec.feature_layers) or None)

    def build(self, classes) -> ModelParts:
        import keras

        from tlmulti.data.box_augment import box_augmentation
        from tlmulti.evaluation.detection import anchor_coverage
        from tlmulti.heads.detection import retinanet_head

        h, w = self.image_size()
        c = self.channels()
        full = self.load_backbone(input_shape=(h, w, c))
        outs = full.outputs if isinstance(full.outputs, (list, tuple)) else [full.outputs]
        levels = [round(math.log2(h / int(t.shape[1]))) for t in outs]
        sides = self._train_sides
        small = sides is not None and len(sides) and float(np.percentile(sides, 5)) < SMALL_BOX
        lowest = 2 if small and self.recipe.head.anchor_size == "auto" else 3
        keep = []  # the contiguous pyramid levels from stride 8 (4 for small boxes) on
        for i, level in enumerate(levels):
            if level >= lowest and (not keep or level == levels[keep[-1]] + 1):
                keep.append(i)
        if not keep:
            raise TlmultiError(f"Backbone '{self.spec.name}' has no feature map at stride 8 or coarser for a "
                               f"{h}x{w} input; object detection needs one (choose another backbone).")
        backbone = keras.Model(full.inputs, [outs[i] for i in keep], name=full.name) if len(outs) > 1 else full
        anchors = self.anchors(min_level=levels[keep[0]])
        self._anchor_config = anchors
        self._coverage = anchor_coverage(anchors, (h, w), self._train_boxes())
        probe = backbone(keras.Input((h, w, c)))
        probe = list(probe) if isinstance(probe, (list, tuple)) else [probe]
        head_cfg = self.recipe.head
        head = retinanet_head(probe, [levels[i] for i in keep], len(classes), anchors, head_cfg.filters, head_cfg.convs)
        aug = self.recipe.data.augment
        parts = ModelParts(
            inputs=keras.Input(shape=(h, w, c), name="image"), backbone=backbone, head=head,
            preprocess=self.preprocessing_layer(), augment=None, groups=resolve_groups(backbone, self.spec),
            augment_pairs=box_augmentation(aug.flip, tuple(aug.scale) if aug.scale else None, self.recipe.seed))
        parts.anchor_config = anchors
        return parts

    def _train_boxes(self):
        data = self.recipe.data
        if not data.train:
            return None
        records, _ = self._read_records(data.train)
        h, w = self.image_size()
        boxes = [np.asarray(r.boxes, float).reshape(-1, 4) * np.array([w / r.size[1], h / r.size[0]] * 2) for r in records]
        return np.concatenate(boxes) if boxes else None

    def compile_args(self) -> dict:
        from tlmulti.layers.detection import DetectionLoss

        return {"loss": DetectionLoss(self.image_size(), self._anchor_config, len(self.classes),
                                      box_weight=self.recipe.head.box_weight)}

    # -- prediction and evaluation ----------------------------------------------------------------------
    def decoder(self, model, score_threshold: float = 0.0, suppress: bool = True):
        from tlmulti.layers.detection import DecodeDetections

        head = self.recipe.head
        return DecodeDetections(self.image_size(), _model_anchors(model, self), len(self.classes),
                                iou_threshold=head.iou_threshold, score_threshold=score_threshold,
                                max_detections=head.max_detections, suppress=suppress)

    def detect(self, model, x, score_threshold: float = 0.0, sizes=None) -> list[tuple]:
        """Per image ``(boxes (k, 4) xyxy, scores (k,), class ids (k,))``, in network pixels or,
        with ``sizes`` ((H, W) per image), in each image's own pixels."""
        from tlmulti.data.pipeline import make_dataset

        decode = self.decoder(model, score_threshold)
        out = []
        for batch in make_dataset(x, None, self.recipe.data.batch_size):
            d = decode(model(batch, training=False))
            n = np.asarray(d["num_detections"])
            boxes, scores, labels = (np.asarray(d[k]) for k in ("boxes", "scores", "classes"))
            out += [(boxes[i, :n[i]], scores[i, :n[i]], labels[i, :n[i]]) for i in range(len(n))]
        return out if sizes is None else self.in_image_pixels(out, sizes)

    def in_image_pixels(self, detections, sizes) -> list[tuple]:
        """``detections`` (per image ``(boxes, scores, class ids)``, network pixels) with their
        boxes in each image's own pixels (``sizes``: (H, W) per image)."""
        h, w = self.image_size()
        return [(b * np.array([s[1] / w, s[0] / h] * 2), sc, l) for (b, sc, l), s in zip(detections, sizes)]

    def truth(self, examples) -> list[tuple]:
        """Per example ``(boxes, class ids)`` in the image's own pixels."""
        h, w = self.image_size()
        out = []
        for t, s in zip(np.asarray(examples.y), examples.meta["size"]):
            t = t[t[:, 4] >= 0]
            out.append((t[:, :4] * np.array([s[1] / w, s[0] / h] * 2), t[:, 4].astype(int)))
        return out

    def evaluate(self, model, examples: Examples, group_by: str | None = None) -> dict:
        from tlmulti.evaluation.detection import coco_metrics, threshold_curve

        if group_by:
            raise TlmultiError("Detection metrics have no --group-by; evaluate each group's annotations separately.")
        if examples.y is None:
            raise DataError("Evaluation needs boxes; give a COCO JSON file, a VOC folder or a YOLO folder.")
        truth = self.truth(examples)
        dets = self.detect(model, examples.x, sizes=examples.meta["size"])
        out = coco_metrics(truth, dets, examples.classes)
        curve = threshold_curve(truth, dets)
        threshold, source = (self.threshold, "validation data (best F1)") if self.threshold is not None else \
            (curve["best_threshold"], "this data (best F1)")
        kept = [(b[s >= threshold], s[s >= threshold], l[s >= threshold]) for b, s, l in dets]
        at = threshold_curve(truth, kept)
        n = len(at["precision"])
        out.update(best_threshold=curve["best_threshold"], best_f1=curve["best_f1"], score_threshold=float(threshold),
                   threshold_from=source, precision=round(at["precision"][-1], 6) if n else 0.0,
                   recall=round(at["recall"][-1], 6) if n else 0.0, f1=round(at["f1"][-1], 6) if n else 0.0)
        return out

    def guard_metric(self) -> str:
        return self.primary_metric

    def guard_value(self, model, examples, batch_size: int) -> float:
        return float(self.evaluate(model, examples)["map50"])

    def choose_threshold(self, val_metrics: dict) -> None:
        if val_metrics.get("best_threshold") is not None:
            self.threshold = float(val_metrics["best_threshold"])

    def predict(self, model, items: list[str], top_k: int = 3, out_dir=None, score_threshold=None) -> list[dict]:
        """``{"input", "detections": [{"label", "score", "box": [x_min, y_min, x_max, y_max]}]}`` per
        image, boxes in the input image's own pixels, scores at least ``score_threshold`` (default
        the run's, chosen on validation data; 0 keeps every box NMS keeps). With ``out_dir``, also
        ``<stem>_boxes.png``: the image with its boxes."""
        from tlmulti.data.images import load_image
        from tlmulti.reports.overlays import class_colours, draw_boxes

        threshold = float(self.threshold or 0.0) if score_threshold is None else float(score_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise TlmultiError(f"--score-threshold must be between 0 and 1, got {threshold}.")
        x, names, sizes = self.read_inputs(items)
        dets = self.detect(model, x, threshold, sizes=sizes)
        out = Path(out_dir) if out_dir else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        results, used = [], set()
        for name, (b, s, l), size in zip(names, dets, sizes):
            rows = [{"label": self.classes[int(c)], "score": round(float(p), 6),
                     "box": [round(float(v), 2) for v in box]} for box, p, c in zip(b, s, l)]
            result = {"input": name, "detections": rows}
            if out is not None:
                stem = Path(name.split("#")[0]).stem
                base, n = stem, 2
                while base in used:
                    base, n = f"{stem}-{n}", n + 1
                used.add(base)
                image = load_image(name.split("#")[0], None, 3)
                picture = out / f"{base}_boxes.png"
                from PIL import Image

                Image.fromarray(draw_boxes(image, b, l, class_colours(self.classes), scores=s,
                                           classes=self.classes)).save(picture)
                result["picture"] = str(picture)
            results.append(result)
        return results

    # -- printing ----------------------------------------------------------------------------------------
    def headline(self, metrics: dict) -> str:
        section, m = ("test", metrics["test"]) if metrics.get("test") else ("val", metrics.get("val", {}))
        return (f"{section} mAP@0.5 {m.get('map50', float('nan')):.4f}  mAP@[.5:.95] {m.get('map', float('nan')):.4f}  "
                f"F1 {m.get('f1', float('nan')):.3f} at score {m.get('score_threshold', float('nan')):.2f}")

    def format_metrics(self, metrics: dict) -> str:
        lines = [f"mAP@[.5:.95]    {metrics['map']:.4f}",
                 f"mAP@0.5         {metrics['map50']:.4f}",
                 f"mAP@0.75        {metrics['map75']:.4f}",
                 f"at score {metrics['score_threshold']:.3f} ({metrics['threshold_from']}): precision "
                 f"{metrics['precision']:.3f}  recall {metrics['recall']:.3f}  F1 {metrics['f1']:.3f}",
                 f"images          {metrics['n_images']} ({metrics['n_boxes']} boxes)", "",
                 f"{'class':<24}{'AP':>8}{'AP50':>8}{'boxes':>8}"]
        for name, c in metrics["per_class"].items():
            ap = f"{c['ap']:>8.3f}" if c["ap"] is not None else f"{'-':>8}"
            ap50 = f"{c['ap50']:>8.3f}" if c["ap50"] is not None else f"{'-':>8}"
            lines.append(f"{name[:23]:<24}{ap}{ap50}{c['boxes']:>8}")
        return "\n".join(lines)

    def format_prediction(self, result: dict) -> str:
        found = ", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]"
                          for d in result["detections"][:10])
        more = f" (+{len(result['detections']) - 10} more)" if len(result["detections"]) > 10 else ""
        where = f" -> {result['picture']}" if result.get("picture") else ""
        return f"{result['input']}: {len(result['detections'])} boxes{': ' + found if found else ''}{more}{where}"


def _model_anchors(model, task):
    """The anchors the model was trained with: its input size and the recipe's anchor keys, at
    the first pyramid level of its head."""
    from tlmulti.layers.detection import AnchorConfig

    head = task.recipe.head
    n_out = int(model.outputs[0].shape[1])
    h, w = task.image_size()
    for first in (3, 4, 5, 2):
        cfg = AnchorConfig(min_level=first, max_level=int(head.max_level), num_scales=int(head.num_scales),
                           aspect_ratios=[float(a) for a in head.aspect_ratios], anchor_size=float(head.anchor_size))
        if sum(math.ceil(h / 2 ** l) * math.ceil(w / 2 ** l) for l in range(first, cfg.max_level + 1)) \
                * cfg.per_location == n_out:
            return cfg
    raise TlmultiError("The model's outputs do not match the anchors its recipe names (head.anchor_size, "
                       "head.max_level, head.num_scales, head.aspect_ratios); was recipe.yaml edited?")
