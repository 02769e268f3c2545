"""Maps a backbone name to the input preprocessing its weights expect."""

import keras
import tensorflow as tf

from keras_ersm import validation

# Backbone family -> `keras.applications` module holding its
# `preprocess_input`. Names are matched case-insensitively.
_BACKBONE_MODULES = {
    "convnext": (
        "ConvNeXtTiny",
        "ConvNeXtSmall",
        "ConvNeXtBase",
        "ConvNeXtLarge",
        "ConvNeXtXLarge",
    ),
    "densenet": ("DenseNet121", "DenseNet169", "DenseNet201"),
    "efficientnet": tuple(f"EfficientNetB{i}" for i in range(8)),
    "efficientnet_v2": tuple(f"EfficientNetV2B{i}" for i in range(4))
    + ("EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L"),
    "inception_v3": ("InceptionV3",),
    "mobilenet": ("MobileNet",),
    "mobilenet_v2": ("MobileNetV2",),
    "mobilenet_v3": ("MobileNetV3Small", "MobileNetV3Large"),
    "resnet": ("ResNet50", "ResNet101", "ResNet152"),
    "resnet_v2": ("ResNet50V2", "ResNet101V2", "ResNet152V2"),
    "vgg16": ("VGG16",),
    "vgg19": ("VGG19",),
    "xception": ("Xception",),
}
# Backbones of this package trained on images scaled to [0, 1].
_UNIT_SCALED_BACKBONES = ("BenchmarkConvNet",)
SUPPORTED_BACKBONES = tuple(
    name for names in _BACKBONE_MODULES.values() for name in names
) + _UNIT_SCALED_BACKBONES
_MODULE_OF = {
    name.lower(): module
    for module, names in _BACKBONE_MODULES.items()
    for name in names
}


def _scale_to_unit(images):
    return tf.cast(images, tf.float32) / 255.0


def get_preprocessing(backbone=None):
    """Returns the function that turns [0, 255] images into backbone inputs.

    Args:
        backbone: `None`, or the name of a `keras.applications` model such
            as `"ResNet50"`, `"MobileNetV2"` or `"EfficientNetV2B0"`, or
            `"BenchmarkConvNet"` (case-insensitive; see
            `SUPPORTED_BACKBONES`).

    Returns:
        A function mapping a float32 tensor of pixel values in `[0, 255]`
        (channels last) to a float32 tensor: for `backbone=None` and
        `"BenchmarkConvNet"` the values scaled to `[0, 1]`, otherwise the output of the backbone module's
        `keras.applications.<module>.preprocess_input`.

    Example:

    >>> preprocess = get_preprocessing("ResNet50")
    >>> x = preprocess(tf.fill((1, 4, 4, 3), 255.0))  # BGR, mean-centred.
    """
    if backbone is None or str(backbone).lower() in {
        name.lower() for name in _UNIT_SCALED_BACKBONES
    }:
        return _scale_to_unit
    module = _MODULE_OF.get(str(backbone).lower())
    if module is None:
        raise validation.invalid(
            "`get_preprocessing`", "backbone",
            f"None or one of {', '.join(SUPPORTED_BACKBONES)}", backbone,
        )
    preprocess_input = getattr(keras.applications, module).preprocess_input

    def preprocess(images):
        outputs = preprocess_input(tf.cast(images, tf.float32))
        return tf.cast(outputs, tf.float32)

    return preprocess
