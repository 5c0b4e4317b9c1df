"""Semantic segmentation: a decoder over a pretrained encoder, trained by the shared trainer.

Data is a folder with ``images/`` and ``masks/`` paired by file stem (see
:mod:`tlmulti.data.masks`); images may be PNG/JPEG, 8/16-bit TIFF, DICOM or NIfTI volumes (cut
into 2-D slices, see :mod:`tlmulti.data.medical`). Intensities are normalised per image or
volume (percentiles for anything wider than 8 bits) before images are cut into overlapping
tiles (``data.tile``) or resized to the network size.

The model is the backbone cut into a multi-output feature extractor at the spec's
``feature_layers`` with a U-Net decoder on top (or, for keras-hub DeepLabV3 / SegFormer
backbones that end in their own decoder, a 1x1 classifier). Phase 1 trains the decoder on cached
encoder features; later phases unfreeze named encoder groups, exactly as for classification, on
the cached cut below them with the finer skips when they can (:mod:`tlmulti.training.cut`).
Flips and quarter turns are applied to tiles and masks together in end-to-end phases, and cached
as views of each tile and its mask on the cut.

Metrics are computed on whole images: tile predictions are stitched back (overlaps averaged)
before comparing with the mask. ``mean_iou`` and ``mean_dice`` average over the foreground
classes (every class but 0); ``per_class`` has IoU, Dice, precision and recall of each class.

Example::

    import tlmulti
    recipe = tlmulti.load_recipe("recipes/vision/nuclei_segmentation.yaml")
    run = tlmulti.train(recipe, out="runs/nuclei")
    print(run.metrics["test"]["mean_dice"])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlmulti.data import Examples
from tlmulti.errors import DataError, RecipeError, TlmultiError
from tlmulti.reports.view import ReportView
from tlmulti.tasks.base import ModelParts, Task, resolve_groups
from tlmulti.tasks.image_classification import ImageTaskMixin
from tlmulti.tasks.segmentation_report import SegmentationReport


@dataclass
class SegmentationParts(ModelParts):
    """Model parts whose assembled model answers at the raw input's size."""

    def assemble(self, backbone_training: bool | None = False, augment: bool = True, name: str = "model"):
        import keras

        from tlmulti.layers.segmentation import ResizeToMatch

        feats = self.features(self.inputs, training=backbone_training, augment=augment)
        probs = ResizeToMatch(name="to_input_size")([self.head(feats), self.inputs])
        return keras.Model(self.inputs, probs, name=name)


# --------------------------------------------------------------------------------------------


class Segmentation(SegmentationReport, ImageTaskMixin, Task):
    name = "segmentation"
    primary_metric, tta_output = "mean_dice", "maps"
    family = "vision"
    report_view = ReportView(
        metric_rows=(("mean Dice (foreground)", "mean_dice"), ("mean IoU (foreground)", "mean_iou"),
                     ("mean IoU (with background)", "mean_iou_with_background"), ("pixel accuracy", "pixel_accuracy")),
        per_class_columns=("iou", "dice", "precision", "recall", "pixels"), per_class_score="iou",
        confusion_kind="Pixel confusion", confusion_cells="shares",
        confusion_text=("<p>Each row is a true class; the colour and the number are the share of its pixels "
                        "predicted as each class.</p>"))
    classes: list[str] = []
    #: A decoder is a network, not a linear head: it needs more steps than a classifier's head to
    #: fit (on a noise-free three-class intensity phantom, training Dice 0.945 after 300 steps,
    #: 0.993 after 1,000); early stopping ends the phase where validation stops improving.
    phase_steps = {"frozen": (1000, 20, 200), "trained": (150, 3, 15)}
    #: Phases that unfreeze the top encoder groups train on the cached cut under
    #: ``cache_features: auto``, the skip features below it cached with it.
    cut_cache = True
    cut_view_names = "flips and quarter turns"

    def __init__(self, recipe, spec=None):
        super().__init__(recipe, spec)
        if "segmentation" not in self.spec.families:
            raise TlmultiError(
                f"Backbone '{self.spec.name}' serves {', '.join(self.spec.families)}, not segmentation "
                "(recipe key backbone.name); see 'tlmulti backbones list --family segmentation'."
            )
        self._check_config()
        self._pixel_weights = None
        self.fingerprint = None  # what derive_defaults measured and chose
        self._sampled = (None,)  # (key of the training set, indices, record) of foreground sampling

    def _check_config(self) -> None:
        """Rules between keys (each key's own values are checked by the recipe)."""
        data = self.recipe.data
        where = f" in {self.recipe.source}" if self.recipe.source else ""
        for key in ("image_size", "tile", "tile_stride"):
            value = getattr(data, key)
            if value and (len(value) not in (1, 2) or min(value) < 1):
                raise RecipeError(f"Key 'data.{key}'{where} must be [size] or [height, width] of positive integers, got {value}.")
        if data.tile and data.image_size and self._pair(data.tile) != self._pair(data.image_size):
            raise RecipeError(
                f"Keys 'data.tile' {data.tile} and 'data.image_size' {data.image_size}{where} disagree: tiles are "
                "fed at their own size; set only data.tile."
            )
        if data.foreground_sampling != "auto" and not 0 <= float(data.foreground_sampling) <= 1:
            raise RecipeError(f"Key 'data.foreground_sampling'{where} is a share from 0 to 1 (or auto), got "
                              f"{data.foreground_sampling}.")
        if len(data.percentiles) != 2:
            raise RecipeError(f"Key 'data.percentiles'{where} must be [low, high], got {data.percentiles}.")
        if data.window and len(data.window) != 2:
            raise RecipeError(f"Key 'data.window'{where} must be [center, width], got {data.window}.")
        for key in ("limit_per_class", "group_column", "split_by", "positive_class", "threshold"):
            if getattr(data, key):
                raise RecipeError(f"Key 'data.{key}'{where} does not apply to segmentation; remove it.")
        if getattr(data, "holdout", None):
            raise RecipeError(f"Key 'data.holdout'{where} does not apply to segmentation; use --test-data.")
        if data.palette and data.binarize_masks:
            raise RecipeError(f"Keys 'data.palette' and 'data.binarize_masks'{where} exclude each other.")

    @staticmethod
    def _pair(value) -> tuple[int, int]:
        return (int(value[0]), int(value[-1]))

    # -- input contract ------------------------------------------------------------------------
    def image_size(self) -> tuple[int, int]:
        data = self.recipe.data
        if data.tile:
            return self._pair(data.tile)
        if data.image_size:
            return self._pair(data.image_size)
        size = self.spec.input.get("size") or [224, 224]
        return self._pair(size)

    def tiling(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        data = self.recipe.data
        if not data.tile:
            return None
        tile = self._pair(data.tile)
        stride = self._pair(data.tile_stride) if data.tile_stride else (max(tile[0] // 2, 1), max(tile[1] // 2, 1))
        return tile, stride

    #: Without a recipe, tiles shrink from the backbone's input size in steps of 32 px (not below
    #: 128) until the training images give at least this many.
    MIN_DERIVED_TILES = 24

    def derive_defaults(self) -> None:
        """What the recipe leaves to the data, from the training data's fingerprint
        (:func:`tlmulti.data.fingerprint.plan`): without ``data.tile`` and ``data.image_size``,
        images larger than the backbone's input contract are tiled instead of shrunk, at the
        largest size from the contract down to 128 px (steps of 32) that cuts the training images
        into at least :attr:`MIN_DERIVED_TILES` tiles (half-tile stride); ``data.normalize: auto``
        on data in Hounsfield units becomes one window for the dataset. The choices are written
        into the saved recipe; the fingerprint goes to the data summary."""
        from tlmulti.data.fingerprint import plan

        data = self.recipe.data
        if not data.train:
            return
        chosen = plan(data, self._pair(self.spec.input.get("size") or [224, 224]), self.MIN_DERIVED_TILES,
                      self.recipe.seed)
        if chosen["tile"]:
            data.tile = chosen["tile"]
        data.normalize, data.window = chosen["normalize"], chosen["window"]
        self.fingerprint = {"measured": chosen["fingerprint"], "choices": chosen["reasons"]}

    def training_examples(self, train: Examples) -> Examples:
        """``train`` with the tiles holding the rarest foreground class repeated where they are
        too few (``data.foreground_sampling``, see :func:`tlmulti.data.fingerprint.foreground_repeats`)."""
        index, _ = self._sampling(train)
        return train if len(index) == len(train) else train.subset(index)

    def _sampling(self, train: Examples):
        from tlmulti.data.fingerprint import foreground_repeats

        key = (id(train), len(train))
        if self._sampled[0] != key:
            masks = (train.y[i] for i in range(len(train)))
            self._sampled = (key, *foreground_repeats(masks, len(train.classes), self.recipe.data.foreground_sampling))
        return self._sampled[1:]

    # -- reading: whole images (slides) first, tiles after the split (see Task.load_splits) -------
    def read_split(self, ref, classes=None, labelled: bool = True):
        """``(slides, classes)`` of a segmentation folder (:func:`tlmulti.data.slides.read_slides`)."""
        from tlmulti.data.slides import read_slides

        return read_slides(ref, self.recipe.data, self.channels(), classes, labelled)

    def split_validation(self, slides, fraction: float, seed: int):
        """Whole files (or, for a single volume, a block of slices; for a single tiled image, a
        band of rows at the bottom) are held out, so no tile and no slice is in both splits."""
        from tlmulti.data.slides import split_slides

        return split_slides(slides, fraction, seed, tiled=self.tiling() is not None)

    def to_examples(self, slides, classes) -> Examples:
        from tlmulti.data.slides import to_examples

        return to_examples(slides, classes, self.image_size(), self.channels(), self.tiling(), self.recipe.data)

    def input_summary(self, train, parts=None) -> dict:
        from collections import Counter

        sources = dict(zip(train.meta["source"], train.meta["size"]))
        sizes = Counter(f"{s[1]}x{s[0]}" for s in sources.values())
        from tlmulti.data.masks import pixel_counts

        counts = pixel_counts(train.y, len(train.classes))
        h, w = self.image_size()
        out = {"images": {"sources": len(sources),
                          "sizes": dict(sizes.most_common()), "network_input": f"{w}x{h}",
                          "tiles": len(train) if self.tiling() else 0},
               "pixels": {c: round(float(n / max(counts.sum(), 1)), 4) for c, n in zip(train.classes, counts)}}
        if self.fingerprint:
            out["fingerprint"] = self.fingerprint["measured"]
            out["choices"] = {**self.fingerprint["choices"], "foreground_sampling": self._sampling(train)[1]}
        return out

    def read(self, ref, classes=None, labelled=True) -> Examples:
        return self.to_examples(*self.read_split(ref, classes, labelled))

    # -- model -----------------------------------------------------------------------------------
    def feature_layers(self) -> list[str]:
        """The spec's skip layers, up to ``backbone.output_layer`` when the recipe sets one."""
        names = list(self.spec.feature_layers)
        last = self.recipe.backbone.output_layer
        if last:
            if last not in names:
                raise RecipeError(
                    f"Key 'backbone.output_layer': '{last}' is not a skip layer of backbone '{self.spec.name}'; "
                    f"for segmentation it must be one of: {', '.join(names) or '(none: this backbone has one output)'}."
                )
            names = names[: names.index(last) + 1]
        return names

    def load_backbone(self, input_shape=None, feature_layers=None):
        """The spec's model cut into a multi-output extractor at its ``feature_layers``."""
        from tlmulti.backbones import load_backbone

        return load_backbone(self.spec, weights=self.recipe.backbone.weights, input_shape=input_shape,
                             output_layer=None, feature_layers=self.feature_layers())

    def build(self, classes) -> ModelParts:
        import keras

        from tlmulti.data.masks import paired_augmentation
        from tlmulti.heads.segmentation import simple_head, unet_decoder

        h, w = self.image_size()
        c = self.channels()
        backbone = self.load_backbone(input_shape=(h, w, c))
        probe = backbone(keras.Input((h, w, c)))
        head_cfg = self.recipe.head
        decoder = head_cfg.decoder
        multi = isinstance(probe, (list, tuple)) and len(probe) > 1
        if decoder == "auto":
            decoder = "unet" if multi else "simple"
        if decoder == "unet" and multi and head_cfg.image_skip and int(probe[0].shape[1]) < h:
            backbone = keras.Model(backbone.inputs, [backbone.inputs[0], *backbone.outputs], name=backbone.name)
            probe = backbone(keras.Input((h, w, c)))  # the input itself: the decoder's full-resolution skip
        if decoder == "unet":
            if not multi:
                raise RecipeError(
                    f"Key 'head.decoder': unet needs a backbone with feature_layers; '{self.spec.name}' has one "
                    "output. Use head.decoder: simple."
                )
            head = unet_decoder(probe, len(classes), (h, w), head_cfg.decoder_filters, head_cfg.batchnorm,
                                head_cfg.dropout)
        else:
            feature = probe[-1] if isinstance(probe, (list, tuple)) else probe
            if multi:
                raise RecipeError("Key 'head.decoder': simple takes one feature map; this backbone has several (use unet).")
            head = simple_head(feature, len(classes), (h, w), head_cfg.dropout)
        aug = self.recipe.data.augment
        return SegmentationParts(
            inputs=keras.Input(shape=(None, None, c), name="image"), backbone=backbone, head=head,
            preprocess=self.preprocessing_layer(), augment=None, groups=resolve_groups(backbone, self.spec),
            augment_pairs=paired_augmentation(aug.flip, aug.rot90, aug.brightness, aug.contrast, self.recipe.seed),
        )

    def cut_views(self, parts) -> tuple[list, bool, bool]:
        """The distinct flips and quarter turns ``data.augment`` draws for a tile and its mask
        (:func:`tlmulti.data.masks.paired_views`); brightness and contrast are the other
        augmentation. Masks are turned with their tiles."""
        from tlmulti.data.masks import paired_views
        from tlmulti.layers.views import random_preprocessing

        aug = self.recipe.data.augment
        h, w = self.image_size()
        others = bool(aug.brightness or aug.contrast or random_preprocessing(parts.preprocess))
        return paired_views(aug.flip, aug.rot90, h == w), others, True

    def strategy_variants(self):
        """``strategy: auto`` also tries the input image as the decoder's full-resolution skip."""
        head = self.recipe.head
        if head.image_skip or head.decoder == "simple":
            return []
        return [("input image as full-resolution skip", ["head.image_skip=true"], None)]

    def class_weight(self, examples: Examples):
        """Keras class weights do not apply to masks: ``balanced`` weights go into the loss."""
        if self.recipe.data.class_weight == "balanced":
            from tlmulti.data.masks import pixel_counts

            counts = pixel_counts(examples.y, len(examples.classes)).astype(float)
            self._pixel_weights = (counts.sum() / (len(counts) * np.maximum(counts, 1))).tolist()
        return None

    def compile_args(self) -> dict:
        import keras

        from tlmulti.layers.segmentation import SegmentationLoss

        n = len(self.classes)
        head = self.recipe.head
        return {
            "loss": SegmentationLoss(n, head.loss, head.dice_weight, self._pixel_weights),
            "metrics": [keras.metrics.IoU(num_classes=n, target_class_ids=list(range(1, n)), sparse_y_true=True,
                                          sparse_y_pred=False, name="iou")],
        }

    # -- prediction and evaluation ---------------------------------------------------------------
    def probabilities(self, model, x: np.ndarray) -> np.ndarray:
        from tlmulti.data.pipeline import make_dataset

        return np.asarray(model.predict(make_dataset(x, None, self.recipe.data.batch_size), verbose=0), np.float32)

    def segment(self, model, image: np.ndarray) -> np.ndarray:
        """Class probabilities ``(H, W, C)`` of one uint8 image ``(H, W, C)`` at its full size:
        tiled and stitched when the recipe tiles, else the model's own resize."""
        from tlmulti.data.medical import extract_tiles, stitch, tile_boxes

        tiling = self.tiling()
        if tiling is None:
            return self.probabilities(model, image[None])[0]
        boxes = tile_boxes(image.shape[:2], *tiling)
        tiles = extract_tiles(image, boxes, tiling[0])
        return stitch(self.probabilities(model, tiles), boxes, image.shape[:2])

    def evaluate(self, model, examples: Examples, group_by: str | None = None) -> dict:
        if group_by:
            raise TlmultiError("Segmentation metrics have no --group-by; evaluate each group's folder separately.")
        if examples.y is None:
            raise DataError("Evaluation needs masks; give a folder with images/ and masks/.")
        return self.metrics_from(self.probabilities(model, examples.x), examples)

    def baseline_features(self, examples: Examples):
        from tlmulti.evaluation.baseline import pixel_intensity_features

        return "pixel_gaussian", "pixels", pixel_intensity_features(examples.x)

    def metrics_from(self, probs, examples: Examples) -> dict:
        """Dice, IoU and the confusion of tile probabilities stitched back into whole images."""
        from tlmulti.data.slides import stitched
        from tlmulti.evaluation.segmentation import confusion, segmentation_metrics

        n = len(examples.classes)
        cm = np.zeros((n, n), dtype=np.int64)
        images = 0
        for _, _, p, mask in stitched(examples, probs):
            cm += confusion(mask, p.argmax(-1), n)
            images += 1
        out = segmentation_metrics(cm, examples.classes)
        out.update(n_images=images, n_tiles=int(len(examples)), n_pixels=int(cm.sum()))
        return out

    def predict(self, model, items: list[str], top_k: int = 3, out_dir=None) -> list[dict]:
        """Segment image files (or every image in folders). With ``out_dir``, writes for each
        input ``<stem>_mask.png`` (class ids as a palette PNG; NIfTI inputs get
        ``<stem>_mask.nii.gz`` in the input's canonical orientation, stacks ``<stem>_mask.tif``)
        and ``<stem>_overlay.png`` (the slice with the most foreground for volumes)."""
        from tlmulti.data.masks import write_mask
        from tlmulti.data.medical import stem_of
        from tlmulti.data.slides import images_of, input_files
        from tlmulti.reports.overlays import overlay_panel

        files = input_files(items)
        out = Path(out_dir) if out_dir else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        results = []
        colours = self.colours()
        for path in files:
            images, info = images_of(path, self.recipe.data, self.channels())
            probs = np.stack([self.segment(model, img) for img in images])
            ids = probs.argmax(-1).astype(np.int32)
            counts = np.bincount(ids.ravel(), minlength=len(self.classes))
            result = {"input": str(path), "slices": int(ids.shape[0]), "shape": list(ids.shape[1:]),
                      "fractions": {c: float(counts[i] / ids.size) for i, c in enumerate(self.classes)},
                      "mask": None, "overlay": None}
            if out is not None:
                stem = stem_of(path)
                base, k = stem, 2
                while base in used:
                    base, k = f"{stem}-{k}", k + 1
                used.add(base)
                result["mask"] = str(write_mask(out, base, ids, info, colours))
                best = int(np.argmax((ids > 0).reshape(len(ids), -1).sum(1)))
                overlay = out / f"{base}_overlay.png"
                overlay_panel(images[best], ids[best], None, colours).save(overlay)
                result["overlay"] = str(overlay)
            results.append(result)
        return results

    # -- printing --------------------------------------------------------------------------------
    # -- export ---------------------------------------------------------------------------------
    def export_model(self, serving, fmt: str):
        """The probabilities and the class map (argmax over classes) at the input size."""
        import keras

        from tlmulti.layers.segmentation import ClassMap

        probs = serving.outputs[0]
        inputs = serving.inputs[0] if len(serving.inputs) == 1 else serving.inputs
        return keras.Model(inputs, {"probabilities": probs, "class_map": ClassMap(name="class_map")(probs)},
                           name="exported"), {}

    def export_outputs(self) -> dict:
        return {"probabilities": "float32 (batch, H, W, classes) at the input size",
                "class_map": "int32 (batch, H, W): argmax over classes, ids as in labels.txt"}

    def headline(self, metrics: dict) -> str:
        section, m = ("test", metrics["test"]) if metrics.get("test") else ("val", metrics.get("val", {}))
        return (f"{section} mean Dice {m.get('mean_dice', float('nan')):.4f}  mean IoU "
                f"{m.get('mean_iou', float('nan')):.4f} (foreground classes)")

    def format_metrics(self, metrics: dict) -> str:
        lines = [f"mean Dice       {metrics['mean_dice']:.4f}  (foreground classes)",
                 f"mean IoU        {metrics['mean_iou']:.4f}  (foreground classes)",
                 f"pixel accuracy  {metrics['pixel_accuracy']:.4f}",
                 f"images          {metrics.get('n_images', '?')} ({metrics.get('n_pixels', '?')} pixels)", "",
                 f"{'class':<24}{'IoU':>8}{'Dice':>8}{'precision':>11}{'recall':>8}{'pixels':>11}"]

        def f(v, width):
            return f"{v:>{width}.3f}" if v is not None else f"{'-':>{width}}"

        for name, c in metrics["per_class"].items():
            lines.append(f"{name[:23]:<24}{f(c['iou'], 8)}{f(c['dice'], 8)}{f(c['precision'], 11)}"
                         f"{f(c['recall'], 8)}{c['pixels']:>11}")
        return "\n".join(lines)

    def format_prediction(self, result: dict) -> str:
        parts = [f"{name} {frac:.1%}" for name, frac in result["fractions"].items() if name != (self.classes or [""])[0]]
        where = f" -> {result['mask']}" if result.get("mask") else ""
        return f"{result['input']}: {'  '.join(parts)}{where}"

