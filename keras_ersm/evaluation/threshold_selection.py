"""IoU at a threshold chosen on a validation split, never on the test split.

A map's IoU with the object depends on the threshold that binarises it; the
threshold that is best on the test images gives an upper bound, not a
measurement (Choe et al. 2020, "Evaluating Weakly Supervised Object
Localization Methods Right"). `validated_iou` picks the threshold that
maximises the mean IoU (`mask_iou`: the map upsampled, thresholded, compared
with the object's pixels) over a validation split with object masks, then
reports the test split's IoU at that threshold.
"""

import numpy as np

from keras_ersm.evaluation.localization import check_thresholds
from keras_ersm.evaluation.localization import iou_by_threshold
from keras_ersm.evaluation.maps import measure_maps
from keras_ersm.evaluation.tokens import RESIZE_METHODS
from keras_ersm import validation

# 0, 0.01, ..., 1: the thresholds of min-max normalised maps, 0.01 apart
# as Choe et al.'s.
DEFAULT_THRESHOLDS = tuple(round(k / 100, 2) for k in range(101))


def _iou_curves(map_fn, dataset, argument, thresholds, normalize, method,
                verbose):
    """(images, thresholds) IoU of every image with an object, and the
    number of images left out; `argument` names `dataset` in errors."""
    (curves,), skipped = measure_maps(
        map_fn, dataset, "`validated_iou`",
        (lambda maps, object_masks: iou_by_threshold(
            maps, object_masks, thresholds, method),),
        argument=argument, normalize=normalize, verbose=verbose,
    )
    return curves, skipped


def validated_iou(map_fn, validation_data, test, *,
                  thresholds=DEFAULT_THRESHOLDS, normalize=True,
                  method="bilinear", verbose=0):
    """Mean test IoU of a map at the threshold best on `validation_data`.

    Args:
        map_fn: function `(images, labels) -> (B, h, w)` maps, e.g. from
            `ersm_maps(model, grid="keep")`, `magnitude_maps` or
            `gradcam_maps`.
        validation_data: batched `tf.data.Dataset` of
            `(images, labels, object_masks)` where the threshold is chosen
            (e.g. the benchmark's `validation` split); disjoint from `test`.
        test: batched `tf.data.Dataset` of `(images, labels, object_masks)`.
        thresholds: increasing numbers, the candidates; the lowest of those
            with the highest mean validation IoU is chosen.
        normalize: bool, min-max normalise each map per image first (then
            thresholds are fractions of each map's range).
        method: resize method of the maps, see `resize_maps`.
        verbose: 0, 1 or 2, a progress bar over the batches of each split.

    Returns:
        A JSON-serialisable dict: `"threshold"` (the chosen one),
        `"iou_mean"` and `"iou_std"` (over the test images at it),
        `"validation_iou_mean"` (at it), `"validation_curve"`
        (`{"thresholds", "iou_mean"}`: the mean validation IoU at each
        candidate), `"normalized"`, `"method"`, `"num_images"` and
        `"num_skipped"` (test images with and without an object),
        `"validation_num_images"`.

    Example:

    Here the model's own test images stand in for a validation split:

    >>> from keras_ersm.evaluation import magnitude_maps
    >>> result = validated_iou(magnitude_maps(model), test_with_object_masks,
    ...                        test_with_object_masks)
    >>> result["threshold"] in result["validation_curve"]["thresholds"]
    True
    >>> result["num_images"], result["validation_num_images"]
    (8, 8)
    """
    caller = "`validated_iou`"
    validation.check_bool(caller, "normalize", normalize)
    validation.check_choice(caller, "method", method, RESIZE_METHODS)
    thresholds = check_thresholds(thresholds, "`validated_iou`")
    held_out, _ = _iou_curves(map_fn, validation_data, "validation_data",
                              thresholds, normalize, method, verbose)
    validation_images = len(held_out)
    held_out = held_out.mean(axis=0)
    best = int(np.argmax(held_out))  # the first, i.e. lowest, on ties
    on_test, skipped = _iou_curves(map_fn, test, "test", thresholds,
                                   normalize, method, verbose)
    return {
        "threshold": thresholds[best],
        "iou_mean": float(on_test[:, best].mean()),
        "iou_std": float(on_test[:, best].std()),
        "validation_iou_mean": float(held_out[best]),
        "validation_curve": {"thresholds": thresholds,
                             "iou_mean": held_out.tolist()},
        "normalized": bool(normalize),
        "method": method,
        "num_images": int(len(on_test)),
        "num_skipped": skipped,
        "validation_num_images": validation_images,
    }
