"""Reading evaluation batches from a `tf.data.Dataset`."""

import keras
import tensorflow as tf

from keras_ersm import validation

VERBOSE = (0, 1, 2)


def iterate_batches(dataset, caller, require_object_masks=False, verbose=0,
                    values=None):
    """Yields `(images, labels, object_masks)` from a batched evaluation
    dataset.

    Args:
        dataset: a batched `tf.data.Dataset` of `(images, labels)` or
            `(images, labels, object_masks)`: `images` float
            `(B, H, W, C)` as the model consumes them, `labels` integer
            `(B,)` or one-hot `(B, classes)` (integer `(B, 1)` too),
            `object_masks` `(B, H, W)` or `(B, H, W, 1)` ground-truth
            object masks (foreground >= 0.5).
        caller: str, the public function named in error messages, in
            backticks (e.g. "`pxap`").
        require_object_masks: bool, whether elements must carry object
            masks.
        verbose: 0 (silent), 1 or 2: a `keras.utils.Progbar` over the
            batches, as the `verbose` of `model.evaluate` (1: a bar redrawn
            after each batch with an estimate of the time left; 2: one line
            once every batch is read). It advances when the caller asks for
            the next batch, i.e. once it has processed the previous one.
        values: `None`, or a function of no arguments returning the
            `(name, value)` pairs the bar shows after each batch (running
            results of the caller, shown as they are).

    Returns:
        A generator of `(images, labels, object_masks)`: float32 images,
        int32 labels `(B,)`, and float32 object masks `(B, H, W)` or
        `None`.

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices(
    ...     (tf.zeros((4, 8, 8, 3)), tf.zeros((4,), tf.int32))).batch(2)
    >>> [images.shape[0] for images, _, _ in iterate_batches(ds, "`f`")]
    [2, 2]
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise validation.invalid(caller, "dataset", "a tf.data.Dataset",
                                 dataset)
    if verbose not in VERBOSE:
        raise validation.invalid(caller, "verbose", f"one of {VERBOSE}",
                                 verbose)
    progbar = None
    if verbose:
        steps = int(dataset.cardinality())
        progbar = keras.utils.Progbar(
            steps if steps > 0 else None, verbose=verbose,
            stateless_metrics=(), unit_name="batch",
        )
    step = 0
    for element in dataset:
        if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
            raise validation.invalid(
                caller, "dataset", "a dataset of `(images, labels)` or "
                "`(images, labels, object_masks)`",
                received=f"elements {dataset.element_spec}",
            )
        images = tf.cast(element[0], tf.float32)
        if images.shape.rank != 4:
            raise validation.invalid(
                caller, "dataset", "a dataset of batched images (batch, "
                "height, width, channels)",
                received=f"images of shape {images.shape}",
                hint="Batch the dataset first.",
            )
        labels = _class_indices(element[1], caller)
        object_masks = None
        if len(element) == 3:
            object_masks = tf.cast(element[2], tf.float32)
            if object_masks.shape.rank == 4 and object_masks.shape[-1] == 1:
                object_masks = object_masks[..., 0]
            if object_masks.shape[1:] != images.shape[1:3]:
                raise validation.invalid(
                    caller, "dataset", "a dataset of object masks `(batch, "
                    "height, width)` or `(batch, height, width, 1)` with the "
                    f"images' height and width {tuple(images.shape[1:3])}",
                    received="object masks of shape "
                    f"{tuple(element[2].shape)}",
                )
        elif require_object_masks:
            raise validation.invalid(
                caller, "dataset", "a dataset of `(images, labels, "
                "object_masks)`: this evaluation needs object masks",
                received="`(images, labels)`",
                hint="Load it with `load_benchmark(..., "
                "with_object_masks=True)`.",
            )
        yield images, labels, object_masks
        step += 1
        if progbar is not None:
            progbar.update(step, values() if values else None)
    if progbar is not None and progbar.target is None:
        # An unknown number of batches: the bar ends where they did.
        progbar.target = step
        progbar.update(step, values() if values else None, finalize=True)


def no_object_error(caller, argument, num_skipped):
    """The error for a dataset `argument` none of whose images shows an
    object: `num_skipped` images with an empty object mask, or none."""
    return validation.invalid(
        caller, argument, "a dataset with an object in some image",
        received=(f"{num_skipped} images whose object masks are all empty"
                  if num_skipped else "an empty one"),
    )


def _class_indices(labels, caller):
    """int32 `(B,)` class indices from `(B,)`, `(B, 1)` or one-hot
    `(B, classes)` labels (the last for more than one class)."""
    rank = labels.shape.rank
    if rank == 2 and labels.shape[-1] == 1:
        labels = labels[:, 0]
    elif rank == 2 and labels.shape[-1] is not None:
        return tf.cast(tf.argmax(labels, axis=-1), tf.int32)
    elif rank != 1:
        raise validation.invalid(
            caller, "dataset", "a dataset of labels `(batch,)`, "
            "`(batch, 1)` or one-hot `(batch, classes)`",
            received=f"labels of shape {labels.shape}",
        )
    invalid = labels < 0
    if labels.dtype.is_floating:
        invalid |= tf.not_equal(labels, tf.round(labels))
    if bool(tf.reduce_any(invalid)):
        first = labels[tf.argmax(tf.cast(invalid, tf.int32))].numpy()
        raise validation.invalid(
            caller, "dataset", "a dataset of class indices (whole "
            "numbers >= 0) in labels `(batch,)` or `(batch, 1)`, or of "
            "one-hot labels `(batch, classes)` for more than one class",
            received=f"the label {first}",
        )
    return tf.cast(labels, tf.int32)
