"""Grad-CAM (Selvaraju et al., 2017) on a feature map of a classifier."""

import keras
import tensorflow as tf

from keras_ersm import compat
from keras_ersm import validation
from keras_ersm.evaluation import splitting
from keras_ersm.evaluation.tokens import resize_maps


def _is_softmax(activation):
    return activation is keras.activations.softmax


def class_logits(head):
    """The class scores Grad-CAM differentiates: the head's logits.

    Grad-CAM's class score is the one before the softmax (Selvaraju et al.):
    the gradient of a probability also carries every other class's score,
    and vanishes as the prediction saturates. A head that ends in a softmax
    (a `Dense` layer with `activation="softmax"`, a `Softmax` layer or
    `Activation("softmax")`) is cut before it; any other head is taken to
    output logits already.

    Args:
        head: a functional `keras.Model` from a feature map to class scores.

    Returns:
        A callable `maps -> (B, classes)` float32 logits.

    Example:

    >>> from keras_ersm.evaluation import split_at_layer
    >>> features, head = split_at_layer(baseline)
    >>> class_logits(head)(features(images)).shape  # 8 images, 2 classes
    TensorShape([8, 2])
    """
    last = head.layers[-1]
    # The call of `last` that produces the head's output (a head cut out
    # of a model calls cloned tensors: `last.input` is the model's).
    node = next(
        (node for node in compat.layer_calls(last)
         if node.output_tensors and node.output_tensors[0] is head.outputs[0]),
        None,
    )
    if node is None or len(node.input_tensors) != 1:
        return head
    ends_in_dense_softmax = isinstance(last, keras.layers.Dense) and (
        _is_softmax(last.activation)
    )
    is_softmax_layer = isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation)
        and _is_softmax(last.activation)
    )
    if not (ends_in_dense_softmax or is_softmax_layer):
        return head
    before = keras.Model(head.inputs, node.input_tensors[0])
    if is_softmax_layer:
        return before

    def logits(maps, training=False):
        inputs = tf.cast(before(maps, training=training), tf.float32)
        scores = tf.matmul(inputs, tf.cast(last.kernel, tf.float32))
        if last.use_bias:
            scores = scores + tf.cast(last.bias, tf.float32)
        return scores

    return logits


def gradcam_from_split(features, head, images, classes=None):
    """Grad-CAM of a model given as `head(features(images))`.

    With `A = features(images)` and `y` the logit of the target class,
    `w_c = mean_{i,j} dy / dA_ijc` and `cam = relu(sum_c w_c A_c)`.

    Args:
        features: `keras.Model` from images to a feature map `(B, h, w, C)`.
        head: `keras.Model` from that map to class scores `(B, classes)`;
            a final softmax is left out (`class_logits`).
        images: float tensor `(B, H, W, C)`.
        classes: `None` for the predicted class, or int `(B,)` target
            classes (e.g. the labels).

    Returns:
        float32 tensor `(B, h, w)`, non-negative, on the feature grid.

    Example:

    >>> from keras_ersm.evaluation import split_at_layer
    >>> features, head = split_at_layer(baseline)
    >>> gradcam_from_split(features, head, images).shape
    TensorShape([8, 4, 4])
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "`gradcam_from_split` differentiates with `tf.GradientTape` and "
            "needs the TensorFlow backend; the Keras backend is "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
        )
    maps = tf.cast(features(images, training=False), tf.float32)
    if len(maps.shape) != 4:
        raise validation.invalid(
            "`gradcam_from_split`", "features", "a model that outputs a 4-D "
            "feature map", received=f"outputs of shape {tuple(maps.shape)}",
        )
    logits = class_logits(head)
    with tf.GradientTape() as tape:
        tape.watch(maps)
        scores = tf.cast(logits(maps, training=False), tf.float32)
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

    >>> gradcam_grid(baseline, images, classes=labels).shape
    TensorShape([8, 4, 4])
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

    >>> gradcam_image(baseline, images).shape  # at the images' 16x16
    TensorShape([8, 16, 16])
    """
    cams = gradcam_grid(model, images, classes, layer)
    return resize_maps(cams, images.shape[1:3], method="bilinear")
