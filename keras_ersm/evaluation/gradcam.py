"""Grad-CAM (Selvaraju et al., 2017) on a feature map of a classifier."""

import tensorflow as tf

from keras_ersm.evaluation import splitting
from keras_ersm.evaluation.tokens import resize_maps


def gradcam_from_split(features, head, images, classes=None):
    """Grad-CAM of a model given as `head(features(images))`.

    With `A = features(images)` and `y` the score of the target class,
    `w_c = mean_{i,j} dy / dA_ijc` and `cam = relu(sum_c w_c A_c)`.

    Args:
        features: `keras.Model` from images to a feature map `(B, h, w, C)`.
        head: `keras.Model` from that map to class scores `(B, classes)`;
            pass logits for the standard definition.
        images: float tensor `(B, H, W, C)`.
        classes: `None` for the predicted class, or int `(B,)` target
            classes (e.g. the labels).

    Returns:
        float32 tensor `(B, h, w)`, non-negative, on the feature grid.

    Example:

    >>> features, head = split_at_layer(baseline)
    >>> cams = gradcam_from_split(features, head, images)
    """
    maps = tf.cast(features(images, training=False), tf.float32)
    if len(maps.shape) != 4:
        raise ValueError(
            "`gradcam_from_split` expects `features` to output a 4-D feature "
            f"map. Received output of shape {tuple(maps.shape)}"
        )
    with tf.GradientTape() as tape:
        tape.watch(maps)
        scores = tf.cast(head(maps, training=False), tf.float32)
        if classes is None:
            classes = tf.argmax(scores, axis=-1, output_type=tf.int32)
        target = tf.gather(
            scores, tf.cast(classes, tf.int32), axis=1, batch_dims=1
        )
    gradients = tape.gradient(target, maps)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))


def gradcam_grid(model, images, classes=None, layer=None):
    """Grad-CAM of a classifier on one of its feature maps.

    Args:
        model: a functional `keras.Model` (one input, one output) mapping
            images to class scores.
        images: float tensor `(B, H, W, C)`.
        classes: `None` for the predicted class, or int `(B,)` targets.
        layer: `None` for the last layer with a 4-D output (the last conv
            block before pooling), or a layer name. The layer's output must
            cut the graph (see `split_at`).

    Returns:
        float32 tensor `(B, h, w)` on that layer's grid; use `resize_maps`
        (or use `gradcam_image`) for image size.

    Example:

    >>> cams = gradcam_grid(baseline, images, classes=labels)
    """
    features, head = splitting.split_at_layer(model, layer)
    return gradcam_from_split(features, head, images, classes)


def gradcam_image(model, images, classes=None, layer=None):
    """Grad-CAM upsampled (bilinearly) to the images' height and width.

    Args:
        model, images, classes, layer: as `gradcam_grid`.

    Returns:
        float32 tensor `(B, H, W)`.

    Example:

    >>> heatmaps = gradcam_image(baseline, images)
    """
    cams = gradcam_grid(model, images, classes, layer)
    return resize_maps(cams, images.shape[1:3], method="bilinear")
