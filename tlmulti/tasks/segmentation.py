"""Semantic segmentation: a decoder over a pretrained encoder, trained by the shared trainer.

Data is a folder with ``images/`` and ``masks/`` paired by file stem (see
:mod:`tlmulti.data.masks`); images may be PNG/JPEG, 8/16-bit TIFF, DICOM or NIfTI volumes (cut
into 2-D slices, see :mod:`tlmulti.data.medical`). Intensities are normalised per image or
volume (percentiles for anything wider than 8 bits) before images are cut into overlapping
tiles (``data.tile``) or resized to the network size.

The model is the backbone cut into a multi-output feature extractor at the spec's
``feature_layers`` with a U-Net decoder on top (or, for keras-hub DeepLabV3 / SegFormer
backbones that end in their own decoder, a 1x1 classifier). Phase 1 trains the decoder on cached
encoder features; later phases unfreeze named encoder groups, exactly as for classification.
Flips and quarter turns are applied to tiles and masks together in phases that do not use the
feature cache.

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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlmulti.data import Examples, resolve_source
from tlmulti.errors import DataError, RecipeError, TlmultiError
from tlmulti.recipe import DataConfig
from tlmulti.tasks.base import ModelParts, Task, resolve_groups
from tlmulti.tasks.image_classification import ImageTaskMixin

N_OVERLAYS = 4
_COLOURS = [(0, 0, 0), (255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255),
            (0, 220, 220), (255, 128, 0), (128, 255, 128), (255, 128, 200), (128, 128, 0), (0, 128, 128)]


@dataclass
class SegmentationAugmentConfig:
    """Random augmentation of training tiles, applied to image and mask together in phases
    without the feature cache: ``flip`` none|horizontal|vertical|both, ``rot90`` quarter turns,
    ``brightness`` / ``contrast`` (image only)."""

    flip: str = "both"
    rot90: bool = True
    brightness: float = 0.0
    contrast: float = 0.0


@dataclass
class SegmentationDataConfig(DataConfig):
    """Segmentation data: folders, masks, classes, medical formats, tiling.

    ``classes``: names by id (0 = background); default: from the masks (``background``,
    ``class_1``, ...). ``palette``: class name -> ``[r, g, b]`` (or ``[grey]``) for colour masks.
    ``binarize_masks``: any non-zero id is foreground (instance masks). ``tile``: ``[h, w]`` cut
    images into tiles of this size (the network's input size) every ``tile_stride`` (default
    half a tile); empty: resize whole images to ``image_size``. ``normalize``: auto | percentile
    | minmax | window | none, with ``percentiles`` and ``window`` ``[center, width]``.
    ``slice_axis``: NIfTI axis cut into 2-D slices (2 = axial); ``skip_empty_slices`` drops
    training slices of volumes / stacks whose mask is all background.
    """

    image_size: list[int] = field(default_factory=list)
    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffix: str = ""
    classes: list[str] = field(default_factory=list)
    palette: dict[str, list[int]] = field(default_factory=dict)
    binarize_masks: bool = False
    tile: list[int] = field(default_factory=list)
    tile_stride: list[int] = field(default_factory=list)
    normalize: str = "auto"
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    window: list[float] = field(default_factory=list)
    slice_axis: int = 2
    skip_empty_slices: bool = False
    augment: SegmentationAugmentConfig = field(default_factory=SegmentationAugmentConfig)


@dataclass
class SegmentationHeadConfig:
    """``decoder``: auto (U-Net when the backbone names skip layers, else simple) | unet |
    simple; ``decoder_filters``: widths of the U-Net blocks, deepest first; ``loss``: ce+dice |
    ce | dice, ``dice_weight`` the weight of Dice in ce+dice."""

    decoder: str = "auto"
    decoder_filters: list[int] = field(default_factory=lambda: [128, 64, 32, 16])
    batchnorm: bool = True
    dropout: float = 0.0
    loss: str = "ce+dice"
    dice_weight: float = 1.0


@dataclass
class Slide:
    """One 2-D image (a file, a slice of a volume, or a region of an image) with its mask."""

    name: str
    path: str
    image: np.ndarray  # (H, W, C) uint8
    mask: np.ndarray | None  # (H, W) int32
    group: str  # the file it came from: validation splits never separate a file's slices
    index: int = 0


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
# Metrics


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Pixel confusion matrix ``cm[true, predicted]``."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(cm, classes: list[str]) -> dict:
    """IoU, Dice, precision and recall per class from a pixel confusion matrix, and their means
    over the foreground classes (all but class 0) where they are defined."""
    cm = np.asarray(cm, dtype=np.float64)
    per_class, ious, dices = {}, [], []
    for i, name in enumerate(classes):
        tp = cm[i, i]
        fp = cm[:, i].sum() - tp
        fn = cm[i, :].sum() - tp
        union = tp + fp + fn
        iou = tp / union if union else None
        dice = 2 * tp / (2 * tp + fp + fn) if union else None
        per_class[name] = {
            "iou": None if iou is None else float(iou), "dice": None if dice is None else float(dice),
            "precision": float(tp / (tp + fp)) if tp + fp else None,
            "recall": float(tp / (tp + fn)) if tp + fn else None,
            "pixels": int(cm[i, :].sum()), "predicted_pixels": int(cm[:, i].sum()),
        }
        if i > 0 or len(classes) == 1:
            if iou is not None:
                ious.append(iou)
                dices.append(dice)
    all_iou = [c["iou"] for c in per_class.values() if c["iou"] is not None]
    total = cm.sum()
    return {
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "mean_dice": float(np.mean(dices)) if dices else 0.0,
        "mean_iou_with_background": float(np.mean(all_iou)) if all_iou else 0.0,
        "pixel_accuracy": float(np.trace(cm) / total) if total else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


# --------------------------------------------------------------------------------------------


class Segmentation(ImageTaskMixin, Task):
    name = "segmentation"
    family = "vision"
    data_config = SegmentationDataConfig
    head_config = SegmentationHeadConfig
    classes: list[str] = []

    def __init__(self, recipe, spec=None):
        super().__init__(recipe, spec)
        if "segmentation" not in self.spec.families:
            raise TlmultiError(
                f"Backbone '{self.spec.name}' serves {', '.join(self.spec.families)}, not segmentation "
                "(recipe key backbone.name); see 'tlmulti backbones list --family segmentation'."
            )
        self._check_config()
        self._pixel_weights = None

    def _check_config(self) -> None:
        from tlmulti.data.medical import NORMALIZATIONS
        from tlmulti.heads.segmentation import DECODERS
        from tlmulti.layers.segmentation import LOSSES

        data, head = self.recipe.data, self.recipe.head
        where = f" in {self.recipe.source}" if self.recipe.source else ""
        rules = [
            ("data.normalize", data.normalize, NORMALIZATIONS),
            ("data.augment.flip", data.augment.flip, ("none", "horizontal", "vertical", "both")),
            ("head.decoder", head.decoder, DECODERS),
            ("head.loss", head.loss, LOSSES),
        ]
        for key, value, choices in rules:
            if value not in choices:
                raise RecipeError(f"Key '{key}'{where} must be one of {', '.join(choices)}, got {value!r}.")
        for key in ("image_size", "tile", "tile_stride"):
            value = getattr(data, key)
            if value and (len(value) not in (1, 2) or min(value) < 1):
                raise RecipeError(f"Key 'data.{key}'{where} must be [size] or [height, width] of positive integers, got {value}.")
        if data.tile and data.image_size and self._pair(data.tile) != self._pair(data.image_size):
            raise RecipeError(
                f"Keys 'data.tile' {data.tile} and 'data.image_size' {data.image_size}{where} disagree: tiles are "
                "fed at their own size; set only data.tile."
            )
        if len(data.percentiles) != 2:
            raise RecipeError(f"Key 'data.percentiles'{where} must be [low, high], got {data.percentiles}.")
        if data.window and len(data.window) != 2:
            raise RecipeError(f"Key 'data.window'{where} must be [center, width], got {data.window}.")
        for key in ("limit_per_class", "group_column"):
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

    # -- reading ---------------------------------------------------------------------------------
    def _images_of(self, path) -> tuple[np.ndarray, Any]:
        """uint8 slices ``(n, H, W, C)`` of one image file, normalised as the recipe says."""
        from tlmulti.data.medical import match_channels, read_stack, to_uint8

        data = self.recipe.data
        stack, info = read_stack(path, axis=data.slice_axis)
        images = to_uint8(stack, data.normalize, data.percentiles, data.window or None, info)
        return match_channels(images, self.channels()), info

    def resolve_classes(self, max_id: int, given: list[str] | None = None) -> list[str]:
        from tlmulti.data.masks import default_classes, normalize_palette

        data = self.recipe.data
        if given:
            return list(given)
        if data.classes:
            classes = list(data.classes)
        elif data.palette:
            classes = [name for name, _ in normalize_palette(data.palette)]
        else:
            classes = default_classes(max_id, data.binarize_masks)
        if len(classes) < 2:
            raise DataError("Segmentation needs at least two classes (background and one more); check data.classes.")
        return classes

    def read_slides(self, ref: str, classes: list[str] | None = None, labelled: bool = True):
        """``(slides, classes)`` of a segmentation folder (``dataset:NAME/SPLIT`` too)."""
        from tlmulti.data.masks import check_class_ids, pair_files, read_mask
        from tlmulti.data.medical import list_files, stem_of

        data = self.recipe.data
        source = resolve_source(ref)
        if labelled:
            pairs = pair_files(source, data.images_dir, data.masks_dir, data.mask_suffix)
        elif source.is_file():
            pairs = [(source, None)]
        else:
            folder = source / data.images_dir if (source / data.images_dir).is_dir() else source
            pairs = [(p, None) for p in list_files(folder)]
            if not pairs:
                raise DataError(f"Folder '{folder}' has no images.")
        known = classes or (list(data.classes) if data.classes else None)
        slides, max_id = [], 0
        for image_path, mask_path in pairs:
            images, _ = self._images_of(image_path)
            masks = None
            if mask_path is not None:
                masks = read_mask(mask_path, axis=data.slice_axis, palette=data.palette or None,
                                  classes=known, binarize=data.binarize_masks)
                if masks.shape[0] != images.shape[0] or masks.shape[1:3] != images.shape[1:3]:
                    raise DataError(
                        f"Image '{image_path}' is {_size(images)} but its mask '{mask_path}' is {_size(masks)}; "
                        "a mask must have its image's size (and slice count)."
                    )
                if known:
                    check_class_ids(masks, known, mask_path)
                max_id = max(max_id, int(masks.max(initial=0)))
            stem = stem_of(image_path)
            many = images.shape[0] > 1
            for k in range(images.shape[0]):
                mask = None if masks is None else masks[k]
                if many and mask is not None and data.skip_empty_slices and not mask.any():
                    continue
                slides.append(Slide(name=f"{stem}_s{k:03d}" if many else stem, path=str(image_path),
                                    image=images[k], mask=mask, group=str(image_path), index=k))
        if not slides:
            raise DataError(f"Segmentation data '{source}' has no slices left (all masks empty with data.skip_empty_slices).")
        if not labelled:
            return slides, list(classes or data.classes or [])
        classes = self.resolve_classes(max_id, classes)
        if not known:
            if max_id == 0:
                raise DataError(f"Every mask in '{source}' is all background (0); segmentation needs labelled pixels.")
            for s in slides:
                check_class_ids(s.mask, classes, s.path)
        return slides, classes

    def to_examples(self, slides: list[Slide], classes: list[str]) -> Examples:
        """Tiles (or resized images) of ``slides`` with the metadata to stitch them back."""
        from tlmulti.data.images import convert
        from tlmulti.data.medical import extract_tiles, tile_boxes

        tiling = self.tiling()
        h, w = self.image_size()
        xs, ys = [], []
        meta: dict[str, list] = {"source": [], "path": [], "box": [], "size": [], "slice": []}
        for s in slides:
            size = list(s.image.shape[:2])
            if tiling:
                boxes = tile_boxes(size, *tiling)
                xs.append(extract_tiles(s.image, boxes, tiling[0]))
                if s.mask is not None:
                    ys.append(extract_tiles(s.mask, boxes, tiling[0]))
            else:
                boxes = [None]
                xs.append(convert(s.image, (h, w), self.channels())[None])
                if s.mask is not None:
                    ys.append(_resize_nearest(s.mask, (h, w))[None])
            for box in boxes:
                meta["source"].append(s.name)
                meta["path"].append(s.path)
                meta["box"].append(None if box is None else [int(box[0]), int(box[1])])
                meta["size"].append(size)
                meta["slice"].append(s.index)
        x = np.concatenate(xs).astype(np.uint8)
        y = np.concatenate(ys).astype(np.int32) if ys else None
        return Examples(x=x, y=y, classes=list(classes), meta=meta)

    def read(self, ref, classes=None, labelled=True) -> Examples:
        slides, classes = self.read_slides(ref, classes, labelled)
        return self.to_examples(slides, classes)

    def load_splits(self):
        """Train, validation and optional test tiles. Without validation data, whole files (or,
        for a single volume, a block of slices; for a single tiled image, a band of rows at the
        bottom) are held out, so no tile and no slice is shared between the splits."""
        data = self.recipe.data
        if not data.train:
            raise TlmultiError("No training data: pass --data or set data.train in the recipe.")
        train, classes = self.read_slides(data.train)
        if data.val:
            val, _ = self.read_slides(data.val, classes)
        else:
            if not 0 < data.val_split < 1:
                raise TlmultiError("data.val_split must be between 0 and 1 when no validation data is given.")
            train, val = self.split_slides(train, data.val_split, self.recipe.seed)
        test = self.to_examples(*self.read_slides(data.test, classes)) if data.test else None
        return self.to_examples(train, classes), self.to_examples(val, classes), test

    def split_slides(self, slides: list[Slide], fraction: float, seed: int = 0):
        """(train, val) slides with no file, slice or pixel in both."""
        groups = list(dict.fromkeys(s.group for s in slides))
        if len(groups) >= 2:
            rng = np.random.default_rng(seed)
            order = rng.permutation(len(groups))
            n = min(max(int(round(len(groups) * fraction)), 1), len(groups) - 1)
            held = {groups[i] for i in order[:n]}
            return [s for s in slides if s.group not in held], [s for s in slides if s.group in held]
        if len(slides) >= 2:
            n = min(max(int(round(len(slides) * fraction)), 1), len(slides) - 1)
            return slides[:-n], slides[-n:]
        if self.tiling() is None:
            raise DataError(
                f"Only one training image ('{slides[0].path}'); give validation data (--val-data) or set "
                "data.tile so a band of the image can be held out."
            )
        s = slides[0]
        rows = s.image.shape[0]
        cut = rows - min(max(int(round(rows * fraction)), 1), rows - 1)
        top = dataclasses.replace(s, name=f"{s.name}_rows0-{cut}", image=s.image[:cut], mask=s.mask[:cut])
        bottom = dataclasses.replace(s, name=f"{s.name}_rows{cut}-{rows}", image=s.image[cut:], mask=s.mask[cut:])
        return [top], [bottom]

    # -- model -----------------------------------------------------------------------------------
    def feature_layers(self) -> list[str]:
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

    def load_backbone(self, input_shape=None):
        """The spec's model cut into a multi-output extractor at its ``feature_layers``."""
        import keras

        from tlmulti.backbones import load_backbone

        spec = dataclasses.replace(self.spec, output_layer="") if self.spec.feature_layers else self.spec
        model = load_backbone(spec, weights=self.recipe.backbone.weights, input_shape=input_shape)
        names = self.feature_layers()
        if not names:
            return model
        outputs = []
        for n in names:
            try:
                outputs.append(model.get_layer(n).output)
            except ValueError:
                raise TlmultiError(
                    f"Backbone '{self.spec.name}' has no layer '{n}' named in its feature_layers; "
                    "fix the spec's feature_layers."
                ) from None
        return keras.Model(model.inputs, outputs, name=f"{model.name}_features")

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

    def class_weight(self, examples: Examples):
        """Keras class weights do not apply to masks: ``balanced`` weights go into the loss."""
        if self.recipe.data.class_weight == "balanced":
            counts = np.bincount(examples.y.ravel(), minlength=len(examples.classes)).astype(float)
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
        from tlmulti.training.data import make_dataset

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

    def stitched(self, examples: Examples, probs: np.ndarray):
        """Per source image: ``(name, image, probabilities, mask)`` at full size for tiles, at the
        network size for resized images."""
        from tlmulti.data.medical import stitch

        order = list(dict.fromkeys(examples.meta["source"]))
        index: dict[str, list[int]] = {}
        for i, s in enumerate(examples.meta["source"]):
            index.setdefault(s, []).append(i)
        for name in order:
            idx = index[name]
            boxes = [examples.meta["box"][i] for i in idx]
            mask = None
            if boxes[0] is None:
                i = idx[0]
                image, p = examples.x[i], probs[i]
                if examples.y is not None:
                    mask = examples.y[i]
            else:
                size = examples.meta["size"][idx[0]]
                image = stitch(examples.x[idx], boxes, size)
                p = stitch(probs[idx], boxes, size)
                if examples.y is not None:
                    mask = stitch(examples.y[idx], boxes, size)
            yield name, image, p, mask

    def evaluate(self, model, examples: Examples, group_by: str | None = None) -> dict:
        if group_by:
            raise TlmultiError("Segmentation metrics have no --group-by; evaluate each group's folder separately.")
        if examples.y is None:
            raise DataError("Evaluation needs masks; give a folder with images/ and masks/.")
        n = len(examples.classes)
        probs = self.probabilities(model, examples.x)
        cm = np.zeros((n, n), dtype=np.int64)
        images = 0
        for _, _, p, mask in self.stitched(examples, probs):
            cm += confusion(mask, p.argmax(-1), n)
            images += 1
        out = segmentation_metrics(cm, examples.classes)
        out.update(n_images=images, n_tiles=int(len(examples)), n_pixels=int(cm.sum()))
        return out

    def report(self, run_dir, model, examples, metrics) -> list[str]:
        """Overlays (image | truth | prediction) of the first few test images."""
        run_dir = Path(run_dir)
        folder = run_dir / "overlays"
        folder.mkdir(exist_ok=True)
        written = []
        subset_sources = list(dict.fromkeys(examples.meta["source"]))[:N_OVERLAYS]
        keep = [i for i, s in enumerate(examples.meta["source"]) if s in set(subset_sources)]
        part = examples.subset(keep)
        probs = self.probabilities(model, part.x)
        for name, image, p, mask in self.stitched(part, probs):
            path = folder / f"{_safe(name)}.png"
            self.overlay_panel(image, p.argmax(-1), mask).save(path)
            written.append(str(path.relative_to(run_dir)))
        return written

    def colours(self) -> list[tuple[int, int, int]]:
        from tlmulti.data.masks import normalize_palette

        palette = dict(normalize_palette(self.recipe.data.palette)) if self.recipe.data.palette else {}
        out = []
        for i, name in enumerate(self.classes or []):
            colour = palette.get(name)
            if colour is not None and len(colour) == 3:
                out.append(tuple(int(v) for v in colour))
            else:
                out.append(_COLOURS[i % len(_COLOURS)] if i < len(_COLOURS) else tuple(np.random.default_rng(i).integers(0, 255, 3)))
        return out or _COLOURS

    def overlay(self, image: np.ndarray, ids: np.ndarray, alpha: float = 0.45) -> np.ndarray:
        """RGB uint8 image with non-background classes tinted in their colours."""
        rgb = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
        rgb = rgb.astype(np.float32)
        colours = np.asarray(self.colours(), dtype=np.float32)
        ids = np.clip(ids, 0, len(colours) - 1)
        tint = colours[ids]
        fg = (ids > 0)[..., None]
        return np.where(fg, (1 - alpha) * rgb + alpha * tint, rgb).round().astype(np.uint8)

    def overlay_panel(self, image, predicted, truth=None):
        from PIL import Image

        panels = [image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)]
        if truth is not None:
            panels.append(self.overlay(image, truth))
        panels.append(self.overlay(image, predicted))
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        row = [panels[0]]
        for p in panels[1:]:
            row += [gap, p]
        return Image.fromarray(np.concatenate(row, axis=1))

    def mask_image(self, ids: np.ndarray):
        """A palette PNG whose pixel values are the class ids (viewers show the class colours)."""
        from PIL import Image

        if len(self.classes) > 256:
            return Image.fromarray(ids.astype(np.uint16))
        img = Image.fromarray(ids.astype(np.uint8), mode="P")
        flat = [v for c in self.colours() for v in c]
        img.putpalette(flat + [0] * (768 - len(flat)))
        return img

    def predict(self, model, items: list[str], top_k: int = 3, out_dir=None) -> list[dict]:
        """Segment image files (or every image in folders). With ``out_dir``, writes for each
        input ``<stem>_mask.png`` (class ids as a palette PNG; NIfTI inputs get
        ``<stem>_mask.nii.gz`` in the input's canonical orientation, stacks ``<stem>_mask.tif``)
        and ``<stem>_overlay.png`` (the slice with the most foreground for volumes)."""
        from tlmulti.data.medical import is_supported, stem_of

        files = []
        for item in items:
            p = Path(item).expanduser()
            if p.is_dir():
                found = sorted(f for f in p.rglob("*") if f.is_file() and is_supported(f))
                if not found:
                    raise DataError(f"Folder '{p}' has no images.")
                files += found
            elif p.is_file():
                files.append(p)
            else:
                raise DataError(f"'{p}' does not exist.")
        out = Path(out_dir) if out_dir else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        results = []
        for path in files:
            images, info = self._images_of(path)
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
                result["mask"] = str(self._write_mask(out, base, ids, info))
                best = int(np.argmax((ids > 0).reshape(len(ids), -1).sum(1)))
                overlay = out / f"{base}_overlay.png"
                self.overlay_panel(images[best], ids[best]).save(overlay)
                result["overlay"] = str(overlay)
            results.append(result)
        return results

    def _write_mask(self, out: Path, base: str, ids: np.ndarray, info) -> Path:
        if info.kind == "nifti":
            import nibabel as nib

            volume = np.moveaxis(ids, 0, info.axis).astype(np.uint8 if len(self.classes) <= 256 else np.int16)
            path = out / f"{base}_mask.nii.gz"
            nib.save(nib.Nifti1Image(volume, info.affine), str(path))
            return path
        if ids.shape[0] > 1:
            import tifffile

            path = out / f"{base}_mask.tif"
            tifffile.imwrite(str(path), ids.astype(np.uint8 if len(self.classes) <= 256 else np.uint16))
            return path
        path = out / f"{base}_mask.png"
        self.mask_image(ids[0]).save(path)
        return path

    # -- printing --------------------------------------------------------------------------------
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


def _size(stack: np.ndarray) -> str:
    n, h, w = stack.shape[:3]
    return f"{w}x{h}" + (f" x {n} slices" if n > 1 else "")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _resize_nearest(mask: np.ndarray, size) -> np.ndarray:
    h, w = mask.shape[:2]
    if (h, w) == tuple(size):
        return mask
    rows = (np.arange(size[0]) * h / size[0]).astype(int)
    cols = (np.arange(size[1]) * w / size[1]).astype(int)
    return mask[rows][:, cols]
