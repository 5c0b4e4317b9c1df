"""The fixed vocabularies of recipe values, each declared once.

A recipe field that takes one of a few words names its tuple here in the field's metadata
(see :func:`tlmulti.recipe.choice`), so the recipe validates it at any depth and the error names
the key and the valid values. The layers, heads and readers that implement a choice import the
same tuple for their own argument checks. Nothing here imports anything: every layer of the
package may read it.

Choices whose values are registered at run time (tasks, adaptation methods) are not here: the
registry lists them (:func:`tlmulti.registry.adaptation_methods`).
"""

# Training
BATCHNORM_POLICIES = ("frozen", "train")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
DISTRIBUTE = ("auto", "default", "mirrored", "multi_worker", "tpu")
ADAPTATION_SCHEDULES = ("ramp", "constant")
CLASS_WEIGHTS = (None, "balanced")
CLASSIFICATION_LOSSES = ("crossentropy", "focal")
CACHE_FEATURES = ("auto", True, False)
STREAMING = ("auto", True, False)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CACHE_DTYPES = ("float16", "float32")
LR_SCHEDULES = ("constant", "cosine")

# Heads
POOLINGS = ("avg", "max", "flatten", "none")
TEXT_POOLINGS = ("auto", "mean", "cls", "max")
FEATURE_NORMALIZATIONS = ("auto", "none", "batchnorm")
SEGMENTATION_DECODERS = ("auto", "unet", "simple")
SEGMENTATION_LOSSES = ("ce+dice", "ce", "dice")

# Images
FLIPS = ("none", "horizontal", "vertical", "both")
IMAGE_NORMALIZATIONS = ("caffe", "torch", "tf", "centered", "unit", "none")
INTENSITY_NORMALIZATIONS = ("auto", "percentile", "minmax", "window", "none")

# Export
EXPORT_FORMATS = ("saved_model", "tflite", "onnx")
EXPORT_QUANTIZATIONS = ("none", "float16", "dynamic", "int8")

# Audio
AUDIO_FRONTENDS = ("log_mel", "waveform")
AUDIO_SCALES = ("db", "whisper", "log")
AUDIO_NORMALIZATIONS = ("utterance", "global", "none")
STRATEGIES = ("fixed", "auto")
CALIBRATIONS = ("none", "temperature")
TRACKING_BACKENDS = ("none", "mlflow")
