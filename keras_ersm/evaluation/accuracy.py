"""Top-1 accuracy of a classifier over a dataset."""

import tensorflow as tf

from keras_ersm import validation
from keras_ersm.evaluation.data import iterate_batches


def predict_classes(model, images):
    """Top-1 class of every image.

    Args:
        model: a `keras.Model` mapping images to class scores
            `(B, classes)` (logits or probabilities).
        images: float tensor `(B, H, W, C)`.

    Returns:
        int32 tensor `(B,)`.

    Example:

    >>> predict_classes(model, images)
    <tf.Tensor: shape=(8,), dtype=int32, ...>
    """
    scores = model(images, training=False)
    return tf.argmax(scores, axis=-1, output_type=tf.int32)


def top1_accuracy(model, dataset, *, verbose=0):
    """Clean top-1 accuracy.

    Args:
        model: a `keras.Model` mapping images to class scores.
        dataset: a batched `tf.data.Dataset` of `(images, labels)` or
            `(images, labels, object_masks)` (see `iterate_batches`).
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar`
            over the batches, as the `verbose` of `model.evaluate`, showing
            the accuracy so far.

    Returns:
        A dict `{"accuracy": float, "num_correct": int, "num_images": int}`.

    Example:

    >>> result = top1_accuracy(model, test)
    >>> result["num_images"], 0.0 <= result["accuracy"] <= 1.0
    (8, True)
    """
    return count_top1(model, dataset, "`top1_accuracy`", "dataset", verbose)


def count_top1(model, dataset, caller, argument, verbose=0):
    """`top1_accuracy`, with errors naming `caller` and its `argument`."""
    correct = 0
    total = 0
    for images, labels, _ in iterate_batches(
        dataset, caller, verbose=verbose,
        values=lambda: [("accuracy", correct / total)],
    ):
        hits = tf.equal(predict_classes(model, images), labels)
        correct += int(tf.reduce_sum(tf.cast(hits, tf.int32)))
        total += int(labels.shape[0])
    if total == 0:
        raise validation.invalid(caller, argument,
                                 "a non-empty dataset",
                                 received="an empty one")
    return {
        "accuracy": correct / total,
        "num_correct": correct,
        "num_images": total,
    }
