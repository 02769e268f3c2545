"""Keras Applications backbones by name.

`create(name, input_shape)` builds a feature extractor (`include_top=False`).
Names are the Keras Applications class names, matched case-insensitively. The
input preprocessing of each backbone is `keras_ersm.preprocessing`'s.
`cut(backbone, layer)` ends it at an earlier layer (a finer token grid);
`stage_ends` lists the layers worth cutting at, `feature_grid` the grid a
cut backbone gives.

Layers with auto-generated names ("activation_1" in MobileNetV3Small) are
numbered per process by Keras; `get_layer` also finds them by the names a
fresh process gives them (`canonical_layer_names`), so a feature layer names
the same layer in every build.
"""

import collections
import difflib
import functools
import os
import re
import urllib.error

import keras

from keras_ersm import compat
from keras_ersm import validation


_apps = keras.applications

# (filters, stride) of each 3x3 Conv-BN-ReLU block of `benchmark_convnet`.
BENCHMARK_CONVNET_BLOCKS = ((32, 2), (64, 2), (64, 1), (128, 2), (128, 1))


def benchmark_convnet(include_top=False, weights=None, input_shape=None):
    """A small convolutional feature extractor for the offline benchmark.

    Five 3x3 Conv-BN-ReLU blocks (`BENCHMARK_CONVNET_BLOCKS`): a feature map
    at 1/8 of the image side (8x8x128 at 64x64) whose tokens each see 39x39
    pixels, so that a token is local enough to lie on or off an object of
    the benchmark (22-38 px at 64x64). Pre-train it with
    `keras_ersm.pretraining.pretrained_benchmark_backbone`.

    Args:
        include_top: must be False (a feature extractor).
        weights: None or the path of a weights file of this architecture.
        input_shape: (height, width, 3).

    Returns:
        A functional `keras.Model` named `"benchmark_convnet"`.
    """
    if include_top:
        raise validation.invalid(
            "`benchmark_convnet`", "include_top", "False (it is a feature "
            "extractor)", include_top,
        )
    if weights == "imagenet":
        raise validation.invalid(
            "`benchmark_convnet`", "weights", "None or a weights file (it "
            "has no ImageNet weights)", weights,
            hint="Pre-train it on the benchmark with "
            "keras_ersm.pretraining.pretrained_benchmark_backbone.",
        )
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for index, (filters, stride) in enumerate(BENCHMARK_CONVNET_BLOCKS, 1):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same",
                                use_bias=False, name=f"block{index}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{index}_bn")(x)
        x = keras.layers.ReLU(name=f"block{index}_relu")(x)
    model = keras.Model(inputs, x, name="benchmark_convnet")
    if weights is not None:
        model.load_weights(weights)
    return model


BACKBONES = {
    "ResNet50": _apps.ResNet50,
    "ResNet50V2": _apps.ResNet50V2,
    "MobileNetV2": _apps.MobileNetV2,
    "MobileNetV3Small": _apps.MobileNetV3Small,
    "EfficientNetV2B0": _apps.EfficientNetV2B0,
    "EfficientNetV2S": _apps.EfficientNetV2S,
    "ConvNeXtTiny": _apps.ConvNeXtTiny,
    "DenseNet121": _apps.DenseNet121,
    "BenchmarkConvNet": benchmark_convnet,
}


# The layer each backbone is cut at on the offline benchmark (64x64 images,
# digits of 22-38 px): tokens local enough to lie on or off the digit, as
# `BenchmarkConvNet`'s (39 px seen by each of 8x8 tokens). MobileNetV2's
# block 5 expansion sees 43 px on an 8x8 grid (block 6's sees 59, almost the
# whole image); ResNet50's second stage sees 35 px on a 16x16 grid (the
# first block of the third stage already sees 51, its end 99). Receptive
# fields measured as the support of a token's gradient in the image
# (tests/test_backbones.py).
LOCAL_FEATURE_LAYERS = {
    "BenchmarkConvNet": None,
    "MobileNetV2": "block_5_expand_relu",
    "ResNet50": "conv2_block3_out",
}


def follow_batch_statistics(model):
    """Set the momentum of `model`'s batch normalisations to 0.9.

    Trained from scratch, Keras Applications' momentum 0.999 leaves the
    moving statistics far behind the weights for the first thousands of
    steps, so short runs evaluate with stale normalisation.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9


class WeightsDownloadError(OSError):
    """Pretrained weights could not be downloaded (e.g. no network)."""


def canonical_name(name, caller="`canonical_name`", argument="name"):
    """`name`, any case, as spelt in `BACKBONES`.

    Args:
        name: a backbone name, e.g. "resnet50".
        caller: the function (in backticks) or class named in the error
            message.
        argument: the argument named in the error message.

    Returns:
        The key of `BACKBONES`.

    Raises:
        ValueError: no backbone has that name; the closest are suggested.

    Example:

    >>> keras_ersm.backbones.canonical_name("resnet50")
    'ResNet50'
    """
    by_lower = {key.lower(): key for key in BACKBONES}
    if isinstance(name, str) and name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(str(name), list(BACKBONES), n=3)
    raise validation.invalid(
        caller, argument, f"one of {sorted(BACKBONES)} (any case)", name,
        hint=f"Did you mean {close}?" if close else None,
    )


def _download_failure(error):
    """The URL of a failed download in `error`'s chain, or None."""
    message = str(error)
    # keras.utils.get_file re-raises URLError as a bare Exception with this
    # message: "URL fetch failure on <url>: <code> -- <reason>".
    prefix = "URL fetch failure on "
    if message.startswith(prefix):
        return message[len(prefix):].split(": ", 1)[0]
    while error is not None:
        if isinstance(error, (urllib.error.URLError, ConnectionError)):
            return getattr(error, "url", None) or "the weights URL"
        error = error.__cause__ or error.__context__
    return None


def canonical_layer_names(model):
    """The names a fresh Python process gives the layers of `model`.

    Keras numbers auto-generated layer names ("re_lu_3") per process, so
    the second MobileNetV3Small built in a process calls its "re_lu"
    layers "re_lu_14" and up. Counting each auto-named layer's prefix
    through `model.layers` instead gives every build the same names: those
    of a first build (checked for every backbone of `BACKBONES`).

    Returns:
        A list of names, one per layer of `model.layers`.
    """
    counts = collections.Counter()
    names = []
    for layer in model.layers:
        prefix = compat.default_name_prefix(layer)
        if re.fullmatch(rf"{re.escape(prefix)}(_\d+)?", layer.name):
            names.append(f"{prefix}_{counts[prefix]}" if counts[prefix]
                         else prefix)
            counts[prefix] += 1
        else:
            names.append(layer.name)
    return names


def get_layer(model, name):
    """The layer of `model` called `name`, or whose canonical name
    (`canonical_layer_names`) is `name`.

    Raises:
        ValueError: no layer has that name.
    """
    for layer, canonical in zip(model.layers, canonical_layer_names(model)):
        if name in (layer.name, canonical):
            return layer
    raise validation.invalid(
        "`get_layer`", "name", f"the name of a layer of model '{model.name}'",
        received=f"{name!r}, which names no layer",
    )


def create(name, input_shape=(224, 224, 3), weights="imagenet", **kwargs):
    """Build a Keras Applications feature extractor by name.

    Args:
        name: one of `BACKBONES` ("ResNet50", "ResNet50V2", "MobileNetV2",
            "MobileNetV3Small", "EfficientNetV2B0", "EfficientNetV2S",
            "ConvNeXtTiny", "DenseNet121"), any case.
        input_shape: (height, width, 3); at least 32 x 32.
        weights: "imagenet" (downloaded once into `~/.keras/models`), None
            (random initialisation) or a path to a weights file.
        **kwargs: further arguments of the Keras Applications constructor.

    Returns:
        A functional `keras.Model` built with `include_top=False`, whose
        output is the last 4-D feature map.

    Raises:
        WeightsDownloadError: the ImageNet weights are not cached and could
            not be downloaded; the message says how to get them offline.
        ValueError: an unknown name, or `pooling` other than None.

    Example:

    >>> backbone = keras_ersm.backbones.create("ResNet50", (64, 64, 3),
    ...                                        weights=None)
    >>> backbone.output.shape
    (None, 2, 2, 2048)
    """
    key = canonical_name(name, "`create`")
    if kwargs.get("pooling") is not None:
        raise validation.invalid(
            "`create`", "pooling", "None (the backbone is a feature "
            "extractor: its output is the last 4-D feature map; "
            "build_classifier pools after the mask)", kwargs["pooling"],
        )
    try:
        return BACKBONES[key](
            include_top=False, weights=weights, input_shape=input_shape,
            **kwargs,
        )
    except Exception as error:
        url = _download_failure(error)
        if url is None:
            raise
        cache = os.path.join(
            os.environ.get("KERAS_HOME", os.path.join("~", ".keras")),
            "models",
        )
        raise WeightsDownloadError(
            f"create: could not download the {weights!r} weights of {key} "
            f"({error}). This machine seems to have no network access. "
            f"Either download {url} on a machine that has, and copy it into "
            f"{cache}/ here (keeping its file name), or pass weights=None "
            "for a randomly initialised backbone."
        ) from error


def stage_ends(backbone):
    """The last layer of each token grid between the input and the output.

    The layers a backbone is usefully cut at: the outputs of its stages.
    Padding layers only pad, and grids smaller than the output's (e.g.
    squeeze-excite pools) are left out.

    Args:
        backbone: a functional `keras.Model` with a 4-D output.

    Returns:
        A dict {(height, width): canonical layer name}, finest grid first.

    Example:

    >>> backbone = keras_ersm.backbones.create(
    ...     "BenchmarkConvNet", (64, 64, 3), weights=None)
    >>> keras_ersm.backbones.stage_ends(backbone)
    {(32, 32): 'block1_relu', (16, 16): 'block3_relu', (8, 8): 'block5_relu'}
    """
    final = backbone.output.shape[1]
    image_height = backbone.input.shape[1]
    ends = {}
    for layer, name in zip(backbone.layers, canonical_layer_names(backbone)):
        if isinstance(layer, (keras.layers.InputLayer,
                              keras.layers.ZeroPadding2D)):
            continue
        shape = getattr(layer.output, "shape", ())
        if len(shape) == 4 and final <= shape[1] < image_height:
            ends[tuple(shape[1:3])] = name
    return ends


def cut(backbone, feature_layer, *, caller="`cut`", name=None):
    """`backbone` up to the output of layer `feature_layer`.

    Args:
        backbone: a functional `keras.Model`, e.g. from `create`.
        feature_layer: a layer name, or its canonical name
            (`canonical_layer_names`); `None` keeps the whole backbone.
        caller: the function (in backticks) or class named in the error
            message.
        name: the backbone as named in the error message (default: the
            model's name).

    Returns:
        A functional `keras.Model` named as `backbone`, sharing its layers.

    Raises:
        ValueError: `backbone` has no such layer; the message lists the
            layers that end each stage (`stage_ends`) and close names.

    Example:

    >>> backbone = keras_ersm.backbones.create(
    ...     "BenchmarkConvNet", (64, 64, 3), weights=None)
    >>> keras_ersm.backbones.cut(backbone, "block2_relu").output.shape
    (None, 16, 16, 64)
    """
    if feature_layer is None:
        return backbone
    try:
        features = get_layer(backbone, feature_layer).output
    except ValueError as error:
        raise _feature_layer_error(
            backbone, feature_layer, caller, name or backbone.name
        ) from error
    return keras.Model(backbone.inputs, features, name=backbone.name)


def _feature_layer_error(backbone, feature_layer, caller, name):
    """The `ValueError`: `feature_layer` is not in `backbone`, and what
    would be."""
    size = backbone.input.shape[1]
    stages = ", ".join(
        f"{layer!r} ({height}x{width})"
        for (height, width), layer in stage_ends(backbone).items()
    )
    # A high cutoff: only typos, not other layers of similar names.
    close = difflib.get_close_matches(
        feature_layer, canonical_layer_names(backbone), cutoff=0.85,
    )
    return validation.invalid(
        caller, "feature_layer", f"None or a layer of {name}", feature_layer,
        hint=(f"Did you mean {close}? " if close else "")
        + "Pass feature_layer=None (`--feature-layer none`) for its last "
        "feature map, or the last layer of one of its stages (token grid "
        f"for {size}x{size} images): {stages}.",
    )


# Cached: the grid depends on the architecture alone, which `ersm train`
# checks before training and training checks again.
@functools.lru_cache(maxsize=None)
def feature_grid(name, image_size, feature_layer=None, *,
                 caller="`feature_grid`"):
    """The (height, width) of a backbone's feature map, from its
    architecture alone (no weights are loaded or downloaded).

    Args:
        name: one of `BACKBONES`, any case.
        image_size: the side of the square input images.
        feature_layer: as in `cut`.
        caller: the function (in backticks) or class named in an error
            message.

    Returns:
        A tuple (height, width).

    Example:

    >>> keras_ersm.backbones.feature_grid("BenchmarkConvNet", 64)
    (8, 8)
    """
    key = canonical_name(name, caller)
    backbone = create(key, (image_size, image_size, 3), weights=None)
    features = cut(backbone, feature_layer, caller=caller, name=key).output
    return tuple(features.shape[1:3])
