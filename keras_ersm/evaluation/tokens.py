"""Token grids: norms, expansion over feature maps and resizing of maps.

A feature map `(B, H, W, C)` with patch size `p` has `N = (H/p) * (W/p)`
tokens, each one non-overlapping `p x p` patch, on a token grid
`(B, H/p, W/p)`, as in `keras_ersm.energy`.
"""

import tensorflow as tf

from keras_ersm import validation

RESIZE_METHODS = ("bilinear", "nearest", "area")


def check_patch_size(features, patch_size, caller):
    """Raises a ValueError unless `patch_size` divides the map's H and W."""
    validation.check_divides(caller, patch_size, features.shape[1],
                             features.shape[2], "the feature map")


def token_norms(features, patch_size=1):
    """L2 norm of every token of a feature map.

    Args:
        features: float tensor `(B, H, W, C)`.
        patch_size: int, side of a token; must divide H and W.

    Returns:
        float32 tensor `(B, H/p, W/p)`.

    Example:

    >>> round(float(token_norms(tf.ones((1, 4, 4, 3)), patch_size=2)[0, 0, 0]),
    ...       4)  # sqrt(12): 2x2 pixels of 3 ones
    3.4641
    """
    check_patch_size(features, patch_size, "`token_norms`")
    features = tf.cast(features, tf.float32)
    squares = tf.nn.avg_pool2d(
        tf.square(features), patch_size, patch_size, "VALID"
    )
    return tf.sqrt(
        tf.reduce_sum(squares, axis=-1) * float(patch_size * patch_size)
    )


def expand_token_grid(grid, patch_size):
    """Repeats every token value over its `p x p` patch.

    Args:
        grid: tensor `(B, h, w)`.
        patch_size: int >= 1.

    Returns:
        tensor `(B, h * p, w * p, 1)` of the dtype of `grid`.

    Example:

    >>> expand_token_grid(tf.constant([[[1.0, 2.0]]]), 2).shape
    TensorShape([1, 2, 4, 1])
    """
    grid = tf.repeat(tf.repeat(grid, patch_size, axis=1), patch_size, axis=2)
    return grid[..., None]


def resize_maps(maps, size, method="bilinear"):
    """Resizes a batch of 2-D maps, e.g. token grids to image size.

    Args:
        maps: float tensor `(B, h, w)`.
        size: `(height, width)` of the output.
        method: `"bilinear"` (smooth upsampling), `"nearest"` (every token
            becomes a constant block) or `"area"` (averages when shrinking,
            e.g. pooling a Grad-CAM onto a coarser token grid).

    Returns:
        float32 tensor `(B, height, width)`.

    Example:

    >>> resize_maps(tf.ones((2, 4, 4)), (16, 16)).shape
    TensorShape([2, 16, 16])
    """
    validation.check_choice("`resize_maps`", "method", method, RESIZE_METHODS)
    maps = tf.cast(maps, tf.float32)[..., None]
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[1:3]) == size:
        return maps[..., 0]
    return tf.image.resize(maps, size, method=method)[..., 0]


def normalize_maps(maps):
    """Min-max normalises every map of a batch to `[0, 1]`.

    A constant map becomes all zeros.

    Args:
        maps: float tensor `(B, h, w)`.

    Returns:
        float32 tensor `(B, h, w)` with per-map minimum 0 and maximum 1.

    Example:

    >>> normalize_maps(tf.constant([[[1.0, 3.0]]])).numpy().tolist()
    [[[0.0, 1.0]]]
    """
    maps = tf.cast(maps, tf.float32)
    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(maps - low, high - low)
