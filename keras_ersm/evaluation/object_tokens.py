"""Where the token mask's kept tokens fall: on the object, and how many.

A token is "on the object" when at least `on_object` (10% by default) of its
pixels are object pixels of the ground-truth object mask. On the 64x64
benchmark with an 8x8 token grid about 15% of the tokens are on the object.
"""

import numpy as np
import tensorflow as tf

from keras_ersm.evaluation.data import iterate_batches
from keras_ersm.evaluation.maps import ersm_maps
from keras_ersm import validation

ON_OBJECT = 0.1


def object_token_fractions(object_masks, grid_shape):
    """The share of object pixels in each token.

    Args:
        object_masks: (B, H, W) or (B, H, W, 1) array, foreground >= 0.5;
            the grid's height and width must divide H and W.
        grid_shape: (h, w), the token grid.

    Returns:
        float64 numpy array (B, h, w) in [0, 1].

    Example:

    >>> object_masks = np.zeros((1, 4, 4)); object_masks[0, :2, :2] = 1
    >>> object_token_fractions(object_masks, (2, 2))[0].tolist()
    [[1.0, 0.0], [0.0, 0.0]]
    """
    object_masks = np.asarray(object_masks, np.float64)
    if object_masks.ndim == 4:
        object_masks = object_masks[..., 0]
    batch, height, width = object_masks.shape
    rows, columns = grid_shape
    # Unlike `validation.check_divides`, rows and columns may differ.
    if height % rows or width % columns:
        raise validation.invalid(
            "`object_token_fractions`", "grid_shape", "a token grid (rows, "
            "columns) that divides the object masks' height and width "
            f"({height} x {width})", grid_shape,
        )
    cells = (object_masks >= 0.5).reshape(
        batch, rows, height // rows, columns, width // columns
    )
    return cells.mean(axis=(2, 4))


def object_tokens(object_masks, grid_shape, on_object=ON_OBJECT):
    """Which tokens are on the object: the definition every token-level
    measurement uses (`token_mask_statistics`, `pxap`).

    Args:
        object_masks: (B, H, W) or (B, H, W, 1) array, foreground >= 0.5;
            the grid's height and width must divide H and W.
        grid_shape: (h, w), the token grid.
        on_object: a token is on the object when its share of object
            pixels is >= on_object.

    Returns:
        bool numpy array (B, h, w).

    Example:

    One object pixel of four in the top-left token, none elsewhere:

    >>> object_masks = np.zeros((1, 4, 4)); object_masks[0, 0, 0] = 1
    >>> object_tokens(object_masks, (2, 2))[0].tolist()
    [[True, False], [False, False]]
    >>> object_tokens(object_masks, (2, 2), on_object=0.5)[0].tolist()
    [[False, False], [False, False]]
    """
    return object_token_fractions(object_masks, grid_shape) >= on_object


def spearman(a, b):
    """Spearman's rank correlation of two 1-D samples (ties: mean ranks);
    NaN when either is constant."""

    def ranks(values):
        values = np.asarray(values, np.float64)
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values):
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def token_mask_statistics(token_masks, token_fractions, object_areas, *,
                          threshold=0.5, on_object=ON_OBJECT):
    """How much of each image a token mask keeps and how much of it is
    object.

    Args:
        token_masks: (B, h, w) token mask values in [0, 1], e.g. the
            `"mask"` grid of `ersm_maps`.
        token_fractions: (B, h, w) share of object pixels per token
            (`object_token_fractions`).
        object_areas: (B,) the object's share of each image's pixels.
        threshold: a token is kept when its token mask value is
            > threshold.
        on_object: a token is on the object when its share of object
            pixels is >= on_object.

    Returns:
        A JSON-serialisable dict: `kept_fraction` (mean, std, relative std
        = std / mean, over images), `empty_images` (share of images keeping
        no token), `effective_kept_fraction` (mean over images of
        (sum m)^2 / (N sum m^2), the share of tokens an equal-valued mask of
        the same mass would keep; 0 for an all-zero mask),
        `kept_on_object` (the mask's precision: share of all kept tokens
        that are on the object), `object_tokens_kept` (its coverage: share
        of on-object tokens that are kept, pooled over images),
        `object_token_base_rate` (share of all tokens on the object),
        `spearman_kept_vs_area` (rank correlation of the per-image kept
        fraction with the object's area), `num_images`.
    """
    token_masks = np.asarray(token_masks, np.float64)
    token_masks = token_masks.reshape(len(token_masks), -1)
    # `object_tokens`, from the fractions.
    on = np.asarray(token_fractions, np.float64).reshape(len(token_masks), -1)
    on = on >= on_object
    kept = token_masks > threshold
    fractions = kept.mean(axis=1)
    mass = token_masks.sum(axis=1)
    squares = np.square(token_masks).sum(axis=1)
    effective = np.where(
        squares > 0, np.square(mass) / (token_masks.shape[1] * np.maximum(
            squares, 1e-300)), 0.0,
    )
    mean = float(fractions.mean())
    return {
        "kept_fraction": {
            "mean": mean,
            "std": float(fractions.std()),
            "relative_std": float(fractions.std() / mean) if mean else
            float("nan"),
        },
        "empty_images": float(np.mean(~kept.any(axis=1))),
        "effective_kept_fraction": float(effective.mean()),
        "kept_on_object": (float((kept & on).sum() / kept.sum())
                           if kept.any() else float("nan")),
        "object_tokens_kept": (float((kept & on).sum() / on.sum())
                               if on.any() else float("nan")),
        "object_token_base_rate": float(on.mean()),
        "spearman_kept_vs_area": spearman(fractions, object_areas),
        "threshold": float(threshold),
        "on_object": float(on_object),
        "num_images": int(len(token_masks)),
    }


def object_token_statistics(model, dataset, *, mask_layer=None,
                            threshold=0.5, on_object=ON_OBJECT, verbose=0):
    """`token_mask_statistics` of an ERSM model's token mask over a
    dataset.

    Args:
        model: a functional ERSM `keras.Model`.
        dataset: batched `tf.data.Dataset` of
            `(images, labels, object_masks)`.
        mask_layer: `None` for the first `EnergyMask`, or its name.
        threshold, on_object: as `token_mask_statistics`.
        verbose: 0, 1 or 2, a progress bar over the batches.

    Returns:
        The dict of `token_mask_statistics`.

    Example:

    >>> stats = object_token_statistics(model, test_with_object_masks)
    >>> sorted(stats)[:3]
    ['effective_kept_fraction', 'empty_images', 'kept_fraction']
    """
    caller = "`object_token_statistics`"
    threshold = validation.check_number(caller, "threshold", threshold,
                                        "a number in [0, 1)",
                                        lambda v: 0 <= v < 1)
    on_object = validation.check_number(caller, "on_object", on_object,
                                        "a number in (0, 1]",
                                        lambda v: 0 < v <= 1)
    map_fn = ersm_maps(model, mask_layer, "mask")
    token_masks, fractions, areas = [], [], []
    for images, labels, object_masks in iterate_batches(
        dataset, "`object_token_statistics`", require_object_masks=True,
        verbose=verbose,
    ):
        grid = tf.convert_to_tensor(map_fn(images, labels)).numpy()
        object_masks = np.asarray(object_masks)
        token_masks.append(grid)
        fractions.append(object_token_fractions(object_masks, grid.shape[1:3]))
        foreground = (object_masks >= 0.5).reshape(len(object_masks), -1)
        areas.append(foreground.mean(axis=1))
    if not token_masks:
        raise validation.invalid(caller, "dataset", "a non-empty dataset",
                                 received="an empty one")
    return token_mask_statistics(
        np.concatenate(token_masks), np.concatenate(fractions),
        np.concatenate(areas), threshold=threshold, on_object=on_object,
    )
