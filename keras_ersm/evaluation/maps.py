"""Per-token importance maps of a model: ERSM mask, Grad-CAM, magnitude,
and the trivial whole-image map they must beat.

Each factory returns a function `map_fn(images, labels) -> (B, h, w)` float32
tensor, the form `localization_scores`, `pxap` and `validated_iou` consume
(through `map_batches`). The model is split once, when the factory is
called.
"""

import numpy as np
import tensorflow as tf

from keras_ersm.evaluation import splitting
from keras_ersm.evaluation.data import iterate_batches
from keras_ersm.evaluation.data import no_object_error
from keras_ersm.evaluation.gradcam import gradcam_from_split
from keras_ersm.evaluation.tokens import normalize_maps
from keras_ersm.evaluation.tokens import resize_maps
from keras_ersm.evaluation.tokens import token_norms
from keras_ersm import graph
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
    has_mask = mask_layer is not None or bool(graph.energy_masks(model))
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


def map_batches(map_fn, dataset, caller, *, normalize=False, grid_shape=None,
                verbose=0, values=None):
    """The maps of a dataset's images that show an object, batch by batch.

    Images whose object mask is empty have nothing to localise: they are
    left out and counted, as every localisation measurement leaves them out.

    Args:
        map_fn: function `(images, labels) -> (B, h, w)` maps, e.g. from
            `ersm_maps`, `gradcam_maps` or `magnitude_maps`.
        dataset: batched `tf.data.Dataset` of
            `(images, labels, object_masks)`.
        caller: str, the public function named in error messages, in
            backticks (e.g. "`pxap`").
        normalize: bool, min-max normalise each map to `[0, 1]` (after
            resizing it to `grid_shape`); a constant map becomes zeros.
        grid_shape: `None` (each map as `map_fn` returns it) or `(h, w)`:
            maps on another grid are area-resized to it (e.g. a Grad-CAM of
            a finer feature map onto the mask's token grid).
        verbose: 0, 1 or 2, a progress bar over the batches (see
            `iterate_batches`).
        values: `None`, or the progress bar's running values (see
            `iterate_batches`).

    Returns:
        A generator of `(maps, object_masks, num_skipped)`: float32 tensors
        `(B', h, w)` and `(B', H, W)` of the batch's `B'` images with an
        object, and how many of its images were left out.

    Example:

    >>> batches = map_batches(magnitude_maps(model), test_with_object_masks,
    ...                       "`example`", normalize=True)
    >>> [(tuple(maps.shape), skipped) for maps, _, skipped in batches]
    [((4, 4, 4), 0), ((4, 4, 4), 0)]
    """
    for images, labels, object_masks in iterate_batches(
        dataset, caller, require_object_masks=True, verbose=verbose,
        values=values,
    ):
        maps = tf.convert_to_tensor(map_fn(images, labels), tf.float32)
        if maps.shape.rank != 3 or maps.shape[0] != images.shape[0]:
            raise validation.invalid(
                caller, "map_fn", "a function returning "
                f"maps (batch, h, w) with batch {images.shape[0]}",
                received=f"maps of shape {tuple(maps.shape)}",
            )
        if grid_shape is not None:
            maps = resize_maps(maps, grid_shape, "area")
        if normalize:
            maps = normalize_maps(maps)
        has_object = tf.reduce_any(object_masks >= 0.5, axis=(1, 2))
        skipped = int(tf.reduce_sum(tf.cast(~has_object, tf.int32)))
        yield (tf.boolean_mask(maps, has_object),
               tf.boolean_mask(object_masks, has_object), skipped)


def measure_maps(map_fn, dataset, caller, measures, *, argument="dataset",
                 normalize=False, verbose=0):
    """Per-image measures of the maps of every image with an object.

    Args:
        map_fn, dataset, caller, normalize, verbose: as for `map_batches`.
        measures: functions `(maps, object_masks) -> array` of one value
            (or row) per image, on the batches of `map_batches`.
        argument: the name of `dataset` in the error raised when no image
            shows an object.

    Returns:
        `(values, num_skipped)`: per measure, its values for every image
        with an object, in dataset order; the number of images left out.
    """
    per_batch = [[] for _ in measures]
    skipped = 0
    for maps, object_masks, num_skipped in map_batches(
        map_fn, dataset, caller, normalize=normalize, verbose=verbose,
    ):
        skipped += num_skipped
        for batches, measure in zip(per_batch, measures):
            batches.append(measure(maps, object_masks))
    if not sum(len(values) for values in per_batch[0]):
        raise no_object_error(caller, argument, skipped)
    return [np.concatenate(batches) for batches in per_batch], skipped
