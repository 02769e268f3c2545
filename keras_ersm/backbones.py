"""Keras Applications backbones by name.

`create(name, input_shape)` builds a feature extractor (`include_top=False`).
Names are the Keras Applications class names, matched case-insensitively. The
input preprocessing of each backbone is `keras_ersm.preprocessing`'s.

Every backbone built on its own input is built with Keras's automatic layer
names counted afresh, so its layers carry the same names in every build (the
names a fresh Python process gives them), and a feature layer such as
MobileNetV3Small's "activation_1" names the same layer wherever it is looked
up. A backbone built on a given `input_tensor` joins the caller's graph and
is named as Keras Applications names it.
"""

import collections
import contextlib
import difflib
import os
import urllib.error

import keras
from keras.src.backend.common import global_state


_apps = keras.applications

BACKBONES = {
    "ResNet50": _apps.ResNet50,
    "ResNet50V2": _apps.ResNet50V2,
    "MobileNetV2": _apps.MobileNetV2,
    "MobileNetV3Small": _apps.MobileNetV3Small,
    "EfficientNetV2B0": _apps.EfficientNetV2B0,
    "EfficientNetV2S": _apps.EfficientNetV2S,
    "ConvNeXtTiny": _apps.ConvNeXtTiny,
    "DenseNet121": _apps.DenseNet121,
}


class WeightsDownloadError(OSError):
    """Pretrained weights could not be downloaded (e.g. no network)."""


def _lookup(function_name, name):
    by_lower = {key.lower(): key for key in BACKBONES}
    key = by_lower.get(str(name).lower())
    if key is None:
        close = difflib.get_close_matches(str(name), list(BACKBONES), n=3)
        raise ValueError(
            f"{function_name}: argument `name` must be one of "
            f"{sorted(BACKBONES)}; received {name!r}."
            + (f" Did you mean {close}?" if close else "")
        )
    return key


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


@contextlib.contextmanager
def _fresh_layer_names():
    """Count auto-generated layer names ("re_lu_3") from zero inside.

    Keras numbers them per process, so without this the second build of
    MobileNetV3Small in a process calls its "re_lu" layers "re_lu_14" and
    up. Afterwards each count continues from the larger of the two, so
    layers created later never take a name the backbone already uses.
    Keras keeps the counts in its global state (no public API resets them
    alone; `keras.backend.clear_session` resets everything).
    """
    key = "object_name_uids"
    outer = global_state.get_global_attribute(
        key, default=collections.defaultdict(int), set_to_default=True
    )
    inner = collections.defaultdict(int)
    global_state.set_global_attribute(key, inner)
    try:
        yield
    finally:
        for prefix, count in inner.items():
            outer[prefix] = max(outer[prefix], count)
        global_state.set_global_attribute(key, outer)


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

    Example:

    >>> backbone = keras_ersm.backbones.create("ResNet50", (224, 224, 3))
    >>> backbone.output.shape
    (None, 7, 7, 2048)
    """
    key = _lookup("create", name)
    if kwargs.get("pooling") is not None:
        raise ValueError(
            f"create: argument `pooling` must be None (the backbone is a "
            f"feature extractor: its output is the last 4-D feature map; "
            f"build_classifier pools after the mask); received "
            f"{kwargs['pooling']!r}."
        )
    # On a given input the backbone joins a graph whose auto-named layers
    # were counted before: counting afresh would repeat their names.
    naming = (contextlib.nullcontext() if "input_tensor" in kwargs
              else _fresh_layer_names())
    try:
        with naming:
            return BACKBONES[key](
                include_top=False, weights=weights,
                input_shape=input_shape, **kwargs,
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
