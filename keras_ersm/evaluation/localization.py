"""Localisation of token maps against ground-truth object masks: IoU (at a
threshold, or at many at once) and pointing game.

A token map `(B, h, w)` is upsampled (bilinearly by default) to the image
size, thresholded at `threshold` and compared with the object mask
(foreground >= 0.5). ERSM keep maps are probabilities, thresholded at 0.5 as
they are; Grad-CAM and magnitude maps have no fixed scale, so pass
`normalize=True` to min-max normalise each map to `[0, 1]` first (the
threshold then is a fraction of the map's range).

Images whose object mask is empty are skipped and counted.
"""

import numpy as np
import tensorflow as tf

from keras_ersm.evaluation.maps import measure_maps
from keras_ersm.evaluation.tokens import resize_maps
from keras_ersm import validation


def mask_iou(maps, object_masks, threshold=0.5, method="bilinear"):
    """IoU of every thresholded, upsampled map with its object mask.

    Args:
        maps: float tensor `(B, h, w)`.
        object_masks: float tensor `(B, H, W)`, the ground-truth object
            masks, foreground >= 0.5.
        threshold: float; a pixel is predicted foreground when the
            upsampled map is >= threshold.
        method: resize method, see `resize_maps`.

    Returns:
        float64 numpy array `(B,)`; 1.0 where prediction and object mask
        are both empty.

    Example:

    A map keeping the top-left token of 2x2, an object on the top half
    of a 4x4 image:

    >>> object_masks = np.zeros((1, 4, 4)); object_masks[0, :2] = 1
    >>> mask_iou(tf.constant([[[1.0, 0.0], [0.0, 0.0]]]), object_masks,
    ...          method="nearest").tolist()
    [0.5]
    """
    object_masks = tf.convert_to_tensor(object_masks, tf.float32)
    predicted = resize_maps(maps, object_masks.shape[1:3], method) >= threshold
    truth = object_masks >= 0.5
    intersection = tf.reduce_sum(
        tf.cast(tf.logical_and(predicted, truth), tf.float64), axis=(1, 2)
    )
    union = tf.reduce_sum(
        tf.cast(tf.logical_or(predicted, truth), tf.float64), axis=(1, 2)
    )
    return tf.where(union > 0, intersection / tf.maximum(union, 1.0),
                    1.0).numpy()


def check_thresholds(thresholds, caller):
    """`thresholds`, a non-empty increasing sequence of finite numbers, as
    a list of floats; errors name `caller`."""
    expected = "a non-empty, increasing sequence of finite numbers"
    if validation.is_finite_number(thresholds):
        raise validation.invalid(caller, "thresholds", expected,
                                 thresholds, hint=f"Pass [{thresholds!r}].")
    values = np.asarray(thresholds, np.float64)
    if (
        values.ndim != 1 or not values.size
        or not np.all(np.isfinite(values))
        or np.any(np.diff(values) <= 0)
    ):
        raise validation.invalid(caller, "thresholds", expected,
                                 thresholds)
    return [float(value) for value in values]


def iou_by_threshold(maps, object_masks, thresholds, method="bilinear"):
    """`mask_iou` of every map at each of many thresholds, in one pass.

    Equal to `mask_iou(maps, object_masks, t, method)` for every `t` in
    `thresholds` (the comparisons are made in float32, as there), at the
    cost of one upsampling and one count of the pixels per threshold.

    Args:
        maps: float tensor `(B, h, w)`.
        object_masks: float tensor `(B, H, W)`, the ground-truth object
            masks, foreground >= 0.5.
        thresholds: 1-D increasing sequence of finite numbers; a pixel is
            predicted foreground at `t` when the upsampled map is >= t.
        method: resize method, see `resize_maps`.

    Returns:
        float64 numpy array `(B, len(thresholds))`; 1.0 where prediction
        and object mask are both empty.

    Example:

    >>> object_masks = np.zeros((1, 4, 4)); object_masks[0, :2] = 1
    >>> iou_by_threshold(tf.constant([[[1.0, 0.5], [0.0, 0.0]]]),
    ...                  object_masks, [0.0, 0.5, 1.0],
    ...                  method="nearest").tolist()
    [[0.5, 1.0, 0.5]]
    """
    thresholds = np.asarray(check_thresholds(thresholds, "`iou_by_threshold`"))
    object_masks = tf.convert_to_tensor(object_masks, tf.float32)
    batch, height, width = object_masks.shape
    values = resize_maps(maps, (height, width), method).numpy()
    values = values.reshape(batch, height * width)
    truth = (object_masks.numpy() >= 0.5).reshape(batch, height * width)
    count = len(thresholds)
    # Pixel value v is >= thresholds[k] exactly for k <= level - 1, with
    # level the number of thresholds <= v (float32, as `mask_iou`).
    levels = np.searchsorted(thresholds.astype(np.float32), values,
                             side="right")
    offsets = (np.arange(batch) * (count + 1))[:, None]

    def at_least(selected):
        """(B, count): pixels selected with value >= each threshold."""
        counts = np.bincount(
            (levels + offsets)[selected], minlength=batch * (count + 1)
        ).reshape(batch, count + 1)
        return np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]

    predicted = at_least(np.ones_like(truth))
    intersection = at_least(truth)
    union = truth.sum(axis=1, keepdims=True) + predicted - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def pointing_hits(maps, object_masks):
    """Pointing game: whether each map's maximum lies on the object.

    The maximum token (the first in row-major order on ties) points at the
    image pixel under its centre, `(floor((i + 1/2) H / h),
    floor((j + 1/2) W / w))`; it hits when the object mask there is
    >= 0.5.

    Args:
        maps: float tensor `(B, h, w)`.
        object_masks: float tensor `(B, H, W)`, the ground-truth object
            masks, foreground >= 0.5.

    Returns:
        bool numpy array `(B,)`.

    Example:

    >>> object_masks = np.zeros((2, 4, 4)); object_masks[:, :2, :2] = 1
    >>> pointing_hits(tf.constant([[[0.9, 0.1], [0.2, 0.3]],
    ...                            [[0.1, 0.2], [0.3, 0.9]]]),
    ...               object_masks).tolist()
    [True, False]
    """
    maps = tf.convert_to_tensor(maps, tf.float32)
    object_masks = tf.convert_to_tensor(object_masks, tf.float32)
    h, w = maps.shape[1], maps.shape[2]
    height, width = object_masks.shape[1], object_masks.shape[2]
    flat = tf.argmax(tf.reshape(maps, (-1, h * w)), axis=-1,
                     output_type=tf.int32)
    rows = (2 * (flat // w) + 1) * height // (2 * h)
    columns = (2 * (flat % w) + 1) * width // (2 * w)
    values = tf.gather_nd(object_masks, tf.stack([rows, columns], axis=-1),
                          batch_dims=1)
    return (values >= 0.5).numpy()


def localization_scores(map_fn, dataset, *, threshold=0.5, normalize=False,
                        method="bilinear", verbose=0):
    """Mean IoU and pointing-game accuracy of a map over a dataset.

    Args:
        map_fn: function `(images, labels) -> (B, h, w)` maps, e.g. from
            `ersm_maps`, `gradcam_maps` or `magnitude_maps`.
        dataset: batched `tf.data.Dataset` of
            `(images, labels, object_masks)`.
        threshold: float, see the module docstring.
        normalize: bool, min-max normalise each map to `[0, 1]` first.
        method: resize method of the maps, see `resize_maps`.
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar`
            over the batches, as the `verbose` of `model.evaluate`.

    Returns:
        A JSON-serialisable dict: `"iou_mean"`, `"iou_std"`,
        `"pointing_accuracy"`, `"threshold"`, `"normalized"`,
        `"num_images"` (images with an object), `"num_skipped"` (images
        with an empty object mask).

    Example:

    `test_with_object_masks` a dataset of `(images, labels, object_masks)`:

    >>> from keras_ersm.evaluation import ersm_maps, gradcam_maps
    >>> scores = localization_scores(ersm_maps(model), test_with_object_masks)
    >>> scores["num_images"], scores["num_skipped"]
    (8, 0)
    >>> scores = localization_scores(gradcam_maps(baseline),
    ...                              test_with_object_masks, normalize=True)
    >>> 0.0 <= scores["pointing_accuracy"] <= 1.0
    True
    """
    caller = "`localization_scores`"
    # Any finite number: maps that are not normalised have any range.
    threshold = validation.check_number(caller, "threshold", threshold,
                                        "a finite number")
    (ious, hits), skipped = measure_maps(
        map_fn, dataset, caller,
        (lambda maps, object_masks: mask_iou(maps, object_masks, threshold,
                                             method),
         pointing_hits),
        normalize=normalize, verbose=verbose,
    )
    return {
        "iou_mean": float(ious.mean()),
        "iou_std": float(ious.std()),
        "pointing_accuracy": float(hits.mean()),
        "threshold": float(threshold),
        "normalized": bool(normalize),
        "num_images": int(ious.size),
        "num_skipped": skipped,
    }
