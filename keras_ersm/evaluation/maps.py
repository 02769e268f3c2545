"""Per-token importance maps of a model: ERSM mask, Grad-CAM, magnitude,
and the trivial whole-image map they must beat.

Each factory returns a function `map_fn(images, labels) -> (B, h, w)` float32
tensor, the form `localization_scores` consumes. The model is split once,
when the factory is called.
"""

import tensorflow as tf

from keras_ersm.evaluation import splitting
from keras_ersm.evaluation.gradcam import gradcam_from_split
from keras_ersm.evaluation.tokens import token_norms
from keras_ersm import models
from keras_ersm import validation

MASK_GRIDS = ("mask", "keep")
GRADCAM_TARGETS = ("predicted", "label")


def ersm_maps(model, mask_layer=None, grid="mask"):
    """The ERSM layer's mask on its token grid.

    Args:
        model: a functional ERSM `keras.Model` (see `split_at_mask`).
        mask_layer: `None` for the first `EnergyMask`, or its name.
        grid: `"mask"` (the mask the layer applies; equal to `keep` for the
            "reference" formulation) or `"keep"` (`sigmoid(-z / T)`).

    Returns:
        A function `(images, labels) -> (B, H/p, W/p)` with values in
        `[0, 1]`; `labels` is ignored.

    Example:

    >>> ersm_maps(model)(images, labels).shape  # 8 images, 4x4 tokens
    TensorShape([8, 4, 4])
    """
    validation.check_choice("`ersm_maps`", "grid", grid, MASK_GRIDS)
    split = splitting.split_at_mask(model, mask_layer)

    def map_fn(images, labels):
        features = split.features(images, training=False)
        return split.mask_layer.explain(features)[grid]

    return map_fn


def gradcam_maps(model, layer=None, target="predicted"):
    """Grad-CAM (see `gradcam_grid`) on a feature map of the model.

    Args:
        model: a functional `keras.Model`, usually the unmasked baseline.
        layer: `None` for the last 4-D feature map, or a layer name.
        target: `"predicted"` (the model's top class) or `"label"`.

    Returns:
        A function `(images, labels) -> (B, h, w)`, non-negative.

    Example:

    >>> gradcam_maps(baseline, target="label")(images, labels).shape
    TensorShape([8, 4, 4])
    """
    validation.check_choice("`gradcam_maps`", "target", target,
                            GRADCAM_TARGETS)
    features, head = splitting.split_at_layer(model, layer)

    def map_fn(images, labels):
        classes = labels if target == "label" else None
        return gradcam_from_split(features, head, images, classes)

    return map_fn


def magnitude_maps(model, layer=None, patch_size=None, mask_layer=None):
    """L2 norm of every feature-map token.

    For a model with an `EnergyMask` (and `layer=None`) the tokens are the
    mask layer's, on its unmasked input (the features it scores);
    otherwise they are the `patch_size` x `patch_size` patches of `layer`'s
    output (default: the last 4-D feature map).

    Args:
        model: a functional `keras.Model`.
        layer: `None`, or the name of a layer with a 4-D output.
        patch_size: `None` (the mask layer's, else 1) or an int >= 1.
        mask_layer: `None` for the first `EnergyMask`, or its name.

    Returns:
        A function `(images, labels) -> (B, h, w)`, non-negative.

    Example:

    >>> magnitude_maps(model)(images, labels).shape
    TensorShape([8, 4, 4])
    """
    has_mask = mask_layer is not None or bool(models.energy_masks(model))
    if layer is None and has_mask:
        split = splitting.split_at_mask(model, mask_layer)
        features = split.features
        if patch_size is None:
            patch_size = split.mask_layer.options.patch_size
    else:
        features, _ = splitting.split_at_layer(model, layer)
    if patch_size is None:
        patch_size = 1

    def map_fn(images, labels):
        return token_norms(
            tf.cast(features(images, training=False), tf.float32), patch_size
        )

    return map_fn


def whole_image_maps():
    """The trivial map: one token of 1 per image, i.e. "the whole image".

    The reference a localising map must beat: its IoU with an object mask
    is the object's share of the image (what a token mask keeping every token
    scores too), and in the pointing game it points at the image centre
    (the centre baseline).

    Returns:
        A function `(images, labels) -> (B, 1, 1)` of ones.

    Example:

    Objects covering a quarter of each image, at its centre:

    >>> scores = keras_ersm.evaluation.localization_scores(
    ...     whole_image_maps(), test_with_object_masks)
    >>> scores["iou_mean"], scores["pointing_accuracy"]
    (0.25, 1.0)
    """

    def map_fn(images, labels):
        return tf.ones((tf.shape(images)[0], 1, 1), tf.float32)

    return map_fn
