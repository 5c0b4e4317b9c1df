"""The ``data`` and ``head`` sections of the built-in tasks' recipes.

Each task's registry entry names its classes (``data_config`` and ``head_config`` of
:func:`tlmulti.registry.register_task`); the recipe validates those sections against them, and
the tasks read the validated values. A task that names none has the plain
:class:`~tlmulti.recipe.DataConfig` and :class:`~tlmulti.recipe.HeadConfig`.

Example::

    from tlmulti.schema import build
    from tlmulti.task_configs import SegmentationDataConfig
    build(SegmentationDataConfig, {"tile": [256, 256]}, "data").tile_stride   # []
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from tlmulti import choices
from tlmulti.recipe import DataConfig, HeadConfig
from tlmulti.schema import at_least, choice


# --------------------------------------------------------------------------------------------
# Images


@dataclass
class AugmentConfig:
    """Random augmentation of training images (layers inactive at inference)."""

    flip: str = choice("none", choices.FLIPS)
    rotate: float = 0.0  # fraction of a full turn
    zoom: float = 0.0
    translate: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0


@dataclass
class IntensityConfig:
    """How raw medical values become the 0..255 pixels models take, one transform per file:
    ``normalize``: auto (8-bit unchanged, wider by percentiles) | percentile | minmax | window
    (``window`` [center, width], e.g. a CT window in HU, or the DICOM file's own) | none, with
    ``percentiles`` [low, high]; ``slice_axis``: the NIfTI axis cut into 2-D slices (2: axial)."""

    normalize: str = choice("auto", choices.INTENSITY_NORMALIZATIONS)
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    window: list[float] = field(default_factory=list)
    slice_axis: int = 2


@dataclass
class ImageDataConfig(IntensityConfig, DataConfig):
    """``image_size`` [H, W] (empty: the backbone's contract); ``path_column`` of manifests.
    Files: PNG / JPEG / BMP / GIF, 8/16-bit and float TIFF, DICOM, NIfTI volumes (one example per
    slice, all slices of a volume in one split)."""

    image_size: list[int] = at_least([], 1)
    path_column: str = "path"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class MultiLabelDataConfig(ImageDataConfig):
    """``labels_column``: the manifest column of labels; ``separator`` between them."""

    labels_column: str = "labels"
    separator: str = "|"


# --------------------------------------------------------------------------------------------
# Segmentation


@dataclass
class SegmentationAugmentConfig:
    """Random augmentation of training tiles, applied to image and mask together in phases
    without the feature cache: ``flip`` none|horizontal|vertical|both, ``rot90`` quarter turns,
    ``brightness`` / ``contrast`` (image only)."""

    flip: str = choice("both", choices.FLIPS)
    rot90: bool = True
    brightness: float = 0.0
    contrast: float = 0.0


@dataclass
class SegmentationDataConfig(IntensityConfig, DataConfig):
    """Segmentation data: folders, masks, classes, medical formats, tiling.

    ``classes``: names by id (0 = background); default: from the masks (``background``,
    ``class_1``, ...). ``palette``: class name -> ``[r, g, b]`` (or ``[grey]``) for colour masks.
    ``binarize_masks``: any non-zero id is foreground (instance masks). ``tile``: ``[h, w]`` cut
    images into tiles of this size (the network's input size) every ``tile_stride`` (default
    half a tile); empty: resize whole images to ``image_size``. ``normalize``: auto | percentile
    | minmax | window | none, with ``percentiles`` and ``window`` ``[center, width]``.
    ``slice_axis``: NIfTI axis cut into 2-D slices (2 = axial); ``skip_empty_slices`` drops
    training slices of volumes / stacks whose mask is all background. ``foreground_sampling``:
    the least share of training tiles that hold the rarest foreground class (its tiles are
    repeated to reach it); ``auto``: a third where the data has fewer, ``0``: off.
    """

    image_size: list[int] = at_least([], 1)
    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffix: str = ""
    classes: list[str] = field(default_factory=list)
    palette: dict[str, list[int]] = field(default_factory=dict)
    binarize_masks: bool = False
    tile: list[int] = at_least([], 1)
    tile_stride: list[int] = at_least([], 1)
    skip_empty_slices: bool = False
    foreground_sampling: Union[float, str] = at_least("auto", 0.0, auto=True)
    augment: SegmentationAugmentConfig = field(default_factory=SegmentationAugmentConfig)


@dataclass
class SegmentationHeadConfig:
    """``decoder``: auto (U-Net when the backbone names skip layers, else simple) | unet |
    simple; ``decoder_filters``: widths of the U-Net blocks, deepest first; ``image_skip``: when the
    backbone's shallowest skip is coarser than the input (EfficientNet, ResNet start at 1/2), give
    the U-Net's last block the network's input image as a full-resolution skip, as a classic
    U-Net has, so pixel intensity reaches the output (off by default: not yet measured across
    datasets); ``loss``: ce+dice | ce | dice,
    ``dice_weight`` the weight of Dice in ce+dice."""

    decoder: str = choice("auto", choices.SEGMENTATION_DECODERS)
    decoder_filters: list[int] = field(default_factory=lambda: [128, 64, 32, 16])
    image_skip: bool = False
    batchnorm: bool = True
    dropout: float = 0.0
    loss: str = choice("ce+dice", choices.SEGMENTATION_LOSSES)
    dice_weight: float = 1.0


# --------------------------------------------------------------------------------------------
# Object detection


@dataclass
class DetectionAugmentConfig:
    """Random augmentation of training images that moves their boxes with them, in phases without
    the feature cache: ``flip`` none|horizontal|vertical|both; ``scale`` [low, high] zoom factors
    (above 1 a random crop, below 1 the image shrunk onto a padded canvas; boxes are clipped and a
    box keeping under 40% of its area is dropped); ``[]`` for none."""

    flip: str = choice("horizontal", choices.FLIPS)
    scale: list[float] = field(default_factory=lambda: [0.75, 1.25])


@dataclass
class DetectionDataConfig(IntensityConfig, DataConfig):
    """Boxes: a COCO JSON file, a Pascal VOC folder or a YOLO folder / ``data.yaml`` (see
    :mod:`tlmulti.data.boxes`). ``image_size`` [H, W] the network input (images are resized to it,
    boxes with them; empty: derived from the training images, written into the saved recipe);
    ``max_boxes``: boxes kept per image (0: the most any training image has)."""

    image_size: list[int] = at_least([], 1)
    batch_size: int = at_least(8, 1)
    max_boxes: int = at_least(0, 0)
    augment: DetectionAugmentConfig = field(default_factory=DetectionAugmentConfig)


@dataclass
class DetectionHeadConfig:
    """RetinaNet head (keras-hub ``FeaturePyramid`` and ``PredictionHead``): ``filters`` per
    pyramid level and head convolution, ``convs`` 3x3 convolutions per head before its output.
    Anchors: ``anchor_size`` (the smallest anchor is ``8 * anchor_size`` px at stride 8) and
    ``max_level`` (anchors up to stride ``2**max_level``), ``auto`` = derived from the training
    boxes and written into the saved recipe; ``aspect_ratios`` width / height; ``num_scales`` sizes
    per level. Predictions: non-maximum suppression at ``iou_threshold``, at most
    ``max_detections`` per image."""

    filters: int = at_least(96, 8)
    convs: int = at_least(2, 1)
    anchor_size: Union[float, str] = at_least("auto", 0.05, auto=True)
    max_level: Union[int, str] = at_least("auto", 3, auto=True)
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    num_scales: int = at_least(3, 1)
    iou_threshold: float = 0.5
    max_detections: int = at_least(100, 1)
    box_weight: float = at_least(1.0, 0.0)


# --------------------------------------------------------------------------------------------
# Text


@dataclass
class TextDataConfig(DataConfig):
    """``text_column``: one column or several joined by ``separator`` (e.g. [subject, body]);
    empty: ``text``, or the only column of words (found in the training manifest and written
    into the saved recipe);
    ``sequence_length``: tokens per text, [CLS]/[SEP] included (0: the backbone's default);
    ``encoding`` of the files."""

    text_column: list[str] = field(default_factory=list)
    separator: str = "\n"
    sequence_length: int = 0
    encoding: str = "utf-8"


@dataclass
class TextHeadConfig(HeadConfig):
    """``pooling``: ``mean`` (masked mean of the token vectors), ``cls`` (BERT pooler output, or
    the first token), ``max``, or ``auto``: the backbone's own (mean for sentence encoders such as
    MiniLM, cls for BERT). Then optional hidden layers, dropout, and the class layer."""

    pooling: str = choice("auto", choices.TEXT_POOLINGS)
    dropout: float = 0.1


# --------------------------------------------------------------------------------------------
# Audio


@dataclass
class FeatureConfig:
    """Log-mel parameters. Empty values come from the backbone's input contract; a pretrained
    backbone fixes ``n_mels`` (changing it is an error)."""

    n_mels: Optional[int] = None
    n_fft: Optional[int] = None
    win_length: Optional[int] = None
    hop_length: Optional[int] = None
    fmin: Optional[float] = None
    fmax: Optional[float] = None
    scale: Optional[str] = choice(None, (None,) + choices.AUDIO_SCALES)
    normalize: Optional[str] = choice(None, (None,) + choices.AUDIO_NORMALIZATIONS)


@dataclass
class AudioAugmentConfig:
    """Training-only augmentation. Waveform: ``speed`` (max relative speed change), ``shift``
    (max fraction of the clip), ``gain_db``, ``noise_prob`` with ``snr_db`` [low, high].
    SpecAugment on log-mel features: ``time_masks`` of up to ``time_width`` frames and
    ``freq_masks`` of up to ``freq_width`` mel bands. All zero: no augmentation."""

    speed: float = 0.0
    shift: float = 0.0
    gain_db: float = 0.0
    noise_prob: float = 0.0
    snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])
    time_masks: int = 0
    time_width: int = 10
    freq_masks: int = 0
    freq_width: int = 6

    def waveform_enabled(self) -> bool:
        return bool(self.speed or self.shift or self.gain_db or self.noise_prob)

    def spec_enabled(self) -> bool:
        return bool((self.time_masks and self.time_width) or (self.freq_masks and self.freq_width))


@dataclass
class AudioDataConfig(DataConfig):
    """``sample_rate`` / ``clip_seconds`` (empty: the backbone's contract, else 16 kHz and 1 s;
    ``clip_seconds: auto``: the 95th percentile of the training files' durations, rounded up to
    0.1 s, between 0.5 and 10 s, written into the saved recipe);
    ``trim_silence`` with ``trim_db`` before centring; ``path_column`` of manifests;
    ``report_groups``: extra manifest columns reported per group (accuracy and worst group)."""

    sample_rate: Optional[int] = None
    clip_seconds: Union[float, str, None] = at_least(None, 0.0, auto=True)
    trim_silence: bool = True
    trim_db: float = 30.0
    path_column: str = "path"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AudioAugmentConfig = field(default_factory=AudioAugmentConfig)
    report_groups: list[str] = field(default_factory=lambda: ["accent", "speaker"])
