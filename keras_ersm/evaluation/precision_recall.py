"""PxAP: how well a map ranks the object's tokens, without a threshold.

Choe et al. 2020 ("Evaluating Weakly Supervised Object Localization Methods
Right", clovaai/wsolevaluation) measure a localisation map by the area under
its precision-recall curve against the object mask, every pixel of the
dataset pooled into one ranking (PxAP). Here the units are tokens, not
pixels: a token's score is its value in the map, and it is a positive when
it lies on the object (`object_tokens`: at least 10% object pixels). Why
tokens:

* the mask decides per token, and the maps compared with it (feature
  magnitude, Grad-CAM of the last feature map) live on the same grid; a
  pixel-level curve would score how each map is upsampled, not what it
  ranks;
* the mask's kept set is then one point of the same curve: its precision
  (`kept_on_object`) and coverage (`object_tokens_kept`) of
  `token_mask_statistics`.

As in their protocol, each map is first min-max normalised per image
(`normalize=True`), so that a map's scale in one image does not rank its
tokens against another image's. They evaluate the curve at thresholds 0.01
apart; here every distinct score is a threshold (the exact area, which
theirs approaches), with tied scores entering the ranking together.
"""

import numpy as np

from keras_ersm.evaluation.data import no_object_error
from keras_ersm.evaluation.maps import map_batches
from keras_ersm.evaluation.object_tokens import ON_OBJECT
from keras_ersm.evaluation.object_tokens import object_tokens
from keras_ersm import validation


def average_precision(scores, labels):
    """Area under the precision-recall curve of `scores` ranking `labels`.

    `sum_k (R_k - R_{k-1}) P_k` over the distinct scores `s_k` in
    decreasing order, with `P_k` and `R_k` the precision and recall of
    predicting positive every score >= `s_k` (tied scores are predicted
    together): the definition of scikit-learn's `average_precision_score`.
    A constant score gives the share of positives; a score that puts every
    positive first gives 1.

    Args:
        scores: array of finite numbers, any shape.
        labels: array of the same size, true (or 1) for the positives.

    Returns:
        float in `[0, 1]`; NaN when there is no positive.

    Example:

    Positives at ranks 1 and 3 of 4: (1/1 + 2/3) / 2.

    >>> round(average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]), 4)
    0.8333
    >>> average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 0])
    0.25
    """
    caller = "`average_precision`"
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if labels.size != scores.size:
        raise validation.invalid(
            caller, "labels", f"an array of the size of `scores` "
            f"({scores.size})", received=f"{labels.size} labels",
        )
    if not np.all(np.isfinite(scores)):
        raise validation.invalid(
            caller, "scores", "an array of finite numbers",
            received=f"{int(np.sum(~np.isfinite(scores)))} NaN or "
            "infinite scores",
        )
    labels = labels.astype(bool)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    true_positives = np.cumsum(labels)
    # The last position of each run of tied scores: a threshold.
    last = np.append(np.flatnonzero(np.diff(scores)), scores.size - 1)
    precision = true_positives[last] / (last + 1.0)
    recall = true_positives[last] / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def pxap(map_fn, dataset, *, normalize=True, grid_shape=None,
         on_object=ON_OBJECT, verbose=0):
    """PxAP of a map over a dataset: `average_precision` of every token's
    score against whether it is on the object, all images pooled.

    Args:
        map_fn: function `(images, labels) -> (B, h, w)` maps, e.g. from
            `ersm_maps(model, grid="keep")` (the soft keep probabilities),
            `magnitude_maps` or `gradcam_maps`.
        dataset: batched `tf.data.Dataset` of
            `(images, labels, object_masks)`; images whose object mask is
            empty are left out and counted.
        normalize: bool, min-max normalise each map per image first (the
            protocol of Choe et al.; see the module docstring).
        grid_shape: `None` (the map's own grid) or `(h, w)`, the token grid
            to score on; maps on another grid are area-resized to it.
        on_object: a token is a positive when at least this share of its
            pixels is object (see `object_tokens`).
        verbose: 0, 1 or 2, a progress bar over the batches.

    Returns:
        A JSON-serialisable dict: `"pxap"`, `"base_rate"` (the share of
        positive tokens: the PxAP of a constant map), `"normalized"`,
        `"on_object"`, `"grid"`, `"num_tokens"`, `"num_images"` (images
        with an object), `"num_skipped"` (images with an empty object
        mask).

    Example:

    >>> from keras_ersm.evaluation import ersm_maps
    >>> result = pxap(ersm_maps(model, grid="keep"), test_with_object_masks)
    >>> result["num_tokens"], result["base_rate"]  # 8 images of 4x4 tokens
    (128, 0.25)
    >>> 0.0 <= result["pxap"] <= 1.0
    True
    """
    caller = "`pxap`"
    validation.check_bool(caller, "normalize", normalize)
    on_object = validation.check_number(caller, "on_object", on_object,
                                        "a number in (0, 1]",
                                        lambda v: 0 < v <= 1)
    if grid_shape is not None:
        grid_shape = tuple(
            validation.check_integer(caller, "grid_shape", side, minimum=1)
            for side in grid_shape
        )
    scores, labels = [], []
    skipped = 0
    grid = None
    for maps, object_masks, num_skipped in map_batches(
        map_fn, dataset, "`pxap`", normalize=normalize, grid_shape=grid_shape,
        verbose=verbose,
    ):
        skipped += num_skipped
        grid = tuple(maps.shape[1:3])
        scores.append(maps.numpy().reshape(-1))
        labels.append(object_tokens(object_masks.numpy(), grid, on_object)
                      .reshape(-1))
    num_images = sum(len(batch) for batch in scores) // (
        1 if grid is None else grid[0] * grid[1])
    if not num_images:
        raise no_object_error(caller, "dataset", skipped)
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    return {
        "pxap": average_precision(scores, labels),
        "base_rate": float(labels.mean()),
        "normalized": bool(normalize),
        "on_object": on_object,
        "grid": list(grid),
        "num_tokens": int(labels.size),
        "num_images": int(num_images),
        "num_skipped": skipped,
    }
