"""Structured-occlusion robustness: accuracy with parts of the image covered.

Images are occluded as the model consumes them: `fill_value` is in the
model's input space (0.5 is mid-grey for images in `[0, 1]`; pass e.g. the
dataset mean, or 0 for mean-centred inputs, otherwise). It is one number for
every channel, or one per channel: grey after per-channel preprocessing
(caffe's BGR mean subtraction, torch's standardisation) differs from channel
to channel.
"""

import math

import numpy as np
import tensorflow as tf

from keras_ersm.evaluation.accuracy import predict_classes
from keras_ersm.evaluation.data import iterate_batches
from keras_ersm.evaluation.data import no_object_error
from keras_ersm import validation
from keras_ersm.validation import is_finite_number

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
OBJECT_REGIONS = ("mask", "box")


def _is_fraction(value):
    return is_finite_number(value) and 0.0 < value <= 1.0


def square_side(height, width, fraction):
    """Side of the square covering `fraction` of a `height x width` image.

    Args:
        height, width: int, image size.
        fraction: float in `(0, 1]`.

    Returns:
        int, `round(sqrt(fraction * height * width))`, at least 1 and at
        most `min(height, width)`.

    Example:

    >>> square_side(32, 32, 0.25)
    16
    """
    if not _is_fraction(fraction):
        raise validation.invalid("`square_side`", "fraction",
                                 "a number in (0, 1]", fraction)
    side = int(round(math.sqrt(fraction * height * width)))
    return max(1, min(side, height, width))


def random_square_regions(num_images, height, width, fraction, rng):
    """One square per image at a uniformly random position, fully inside.

    Args:
        num_images: int.
        height, width: int, image size.
        fraction: float in `(0, 1]`, area to cover (see `square_side`).
        rng: `numpy.random.Generator`; draws `2 * num_images` uniforms in
            order, so the positions of image `i` do not depend on batching.

    Returns:
        float32 tensor `(num_images, height, width)`, the regions to
        occlude: 1 on the square.

    Example:

    >>> regions = random_square_regions(4, 32, 32, 0.25,
    ...                                 np.random.default_rng(0))
    >>> regions.numpy().sum(axis=(1, 2))
    array([256., 256., 256., 256.], dtype=float32)
    """
    side = square_side(height, width, fraction)
    uniforms = rng.random((num_images, 2))
    top = np.floor(uniforms[:, 0] * (height - side + 1)).astype(np.int32)
    left = np.floor(uniforms[:, 1] * (width - side + 1)).astype(np.int32)
    rows = np.arange(height)[None, :]
    columns = np.arange(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_columns = (columns >= left[:, None]) & (columns < left[:, None] + side)
    regions = in_rows[:, :, None] & in_columns[:, None, :]
    return tf.constant(regions, tf.float32)


def bounding_box_regions(object_masks):
    """The filled bounding box of every object mask (empty stays empty).

    Args:
        object_masks: float tensor `(B, H, W)`, foreground >= 0.5.

    Returns:
        float32 tensor `(B, H, W)`, the regions to occlude: 1 inside each
        box.

    Example:

    >>> bounding_box_regions(tf.constant([[[0., 1., 0.],
    ...                                    [0., 0., 1.],
    ...                                    [0., 0., 0.]]])).numpy().tolist()
    [[[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]
    """
    foreground = tf.cast(object_masks, tf.float32) >= 0.5
    rows = tf.reduce_any(foreground, axis=2)
    columns = tf.reduce_any(foreground, axis=1)

    def span(present):
        # A cumulative "seen from the start" and "seen from the end".
        seen = tf.cast(present, tf.int32)
        after_first = tf.cumsum(seen, axis=1) > 0
        before_last = tf.cumsum(seen, axis=1, reverse=True) > 0
        return tf.logical_and(after_first, before_last)

    box = tf.logical_and(span(rows)[:, :, None], span(columns)[:, None, :])
    return tf.cast(box, tf.float32)


def box_part_regions(object_masks, fraction, rng):
    """A random part of every object's bounding box, `fraction` of its area.

    The part is a rectangle of the box's proportions, its sides
    `sqrt(fraction)` of the box's (rounded, at least 1 pixel), at a
    uniformly random position inside the box: a quarter of the box is a
    half-by-half rectangle.

    Args:
        object_masks: float tensor `(B, H, W)`, foreground >= 0.5.
        fraction: float in `(0, 1]`, the share of the box to cover.
        rng: `numpy.random.Generator`; draws `2 * B` uniforms in order, also
            for empty masks (whose part is empty), so the part of image `i`
            depends neither on batching nor on the other images.

    Returns:
        float32 tensor `(B, H, W)`, the regions to occlude: 1 on each part.

    Example:

    An object whose box is 4x4: a quarter of it is one 2x2 rectangle.

    >>> object_masks = np.zeros((1, 6, 6)); object_masks[0, 1:5, 1:5] = 1
    >>> part = box_part_regions(object_masks, 0.25, np.random.default_rng(0))
    >>> float(part.numpy().sum())
    4.0
    """
    if not _is_fraction(fraction):
        raise validation.invalid("`box_part_regions`", "fraction",
                                 "a number in (0, 1]", fraction)
    foreground = np.asarray(object_masks, np.float32) >= 0.5
    batch, height, width = foreground.shape
    uniforms = rng.random((batch, 2))
    regions = np.zeros((batch, height, width), np.float32)
    scale = math.sqrt(fraction)
    for i in np.flatnonzero(foreground.any(axis=(1, 2))):
        rows = np.flatnonzero(foreground[i].any(axis=1))
        columns = np.flatnonzero(foreground[i].any(axis=0))
        spans = []
        for (first, last), uniform in zip(
            ((rows[0], rows[-1]), (columns[0], columns[-1])), uniforms[i]
        ):
            length = last - first + 1
            side = max(1, min(length, int(round(scale * length))))
            start = first + int(np.floor(uniform * (length - side + 1)))
            spans.append(slice(start, start + side))
        regions[i][tuple(spans)] = 1.0
    return tf.constant(regions)


def occlude(images, regions, fill_value=0.5):
    """Replaces the pixels in `regions` with `fill_value`.

    Args:
        images: float tensor `(B, H, W, C)`.
        regions: float tensor `(B, H, W)` in `{0, 1}`, 1 on the pixels to
            occlude (e.g. from `random_square_regions` or
            `bounding_box_regions`).
        fill_value: float, the value of occluded pixels in every channel,
            or a sequence of `C` floats, one per channel.

    Returns:
        float32 tensor `(B, H, W, C)`.

    Example:

    >>> occlude(tf.ones((1, 2, 2, 1)), tf.constant([[[1., 0.], [0., 0.]]]),
    ...         0.)[0, ..., 0].numpy().tolist()
    [[0.0, 1.0], [1.0, 1.0]]
    >>> occlude(tf.ones((1, 2, 2, 3)), tf.ones((1, 2, 2)),
    ...         [0.1, 0.2, 0.3])[0, 0, 0].numpy()
    array([0.1, 0.2, 0.3], dtype=float32)
    """
    images = tf.cast(images, tf.float32)
    fill_value = check_fill_value(fill_value, "`occlude`", images.shape[-1])
    regions = tf.cast(regions, tf.float32)[..., None]
    return images * (1.0 - regions) + tf.constant(fill_value) * regions


def check_fractions(fractions, caller, argument="fractions"):
    """`fractions`, a non-empty sequence of numbers in `(0, 1]`, as a list
    of floats; errors name `caller` and its `argument`."""
    expected = "a non-empty sequence of numbers in (0, 1]"
    if is_finite_number(fractions):
        raise validation.invalid(caller, argument, expected,
                                 fractions, hint=f"Pass [{fractions!r}].")
    fractions = list(fractions)
    if not fractions or not all(_is_fraction(f) for f in fractions):
        raise validation.invalid(caller, argument, expected,
                                 fractions)
    return [float(fraction) for fraction in fractions]


def check_fill_value(fill_value, caller, channels=None):
    """`fill_value` as a float or a list of floats (JSON-serialisable).

    `channels` is the images' channel count, `None` before any is seen.
    """
    if isinstance(fill_value, np.ndarray):
        fill_value = fill_value.tolist()
    if is_finite_number(fill_value):
        return float(fill_value)
    if (
        isinstance(fill_value, (list, tuple))
        and fill_value
        and all(is_finite_number(value) for value in fill_value)
        and channels in (None, len(fill_value))
    ):
        return [float(value) for value in fill_value]
    per_channel = "one per image channel" + (
        "" if channels is None else f" ({channels})"
    )
    raise validation.invalid(
        caller, "fill_value", "a finite number, or a sequence of "
        f"finite numbers, {per_channel}", fill_value,
    )


def _count_correct(model, images, labels):
    hits = tf.equal(predict_classes(model, images), labels)
    return int(tf.reduce_sum(tf.cast(hits, tf.int32)))


def occlusion_robustness(model, dataset, fractions=DEFAULT_FRACTIONS,
                         fill_value=0.5, seed=0, verbose=0):
    """Accuracy when one grey square covers a fraction of every image.

    For each fraction, every image gets one square of side
    `square_side(H, W, fraction)` at a random position drawn from
    `numpy.random.default_rng([seed, i])` (`i` the fraction's index), so
    two models evaluated with the same seed on the same (unshuffled)
    dataset see the same occlusions.

    Args:
        model: a `keras.Model` mapping images to class scores.
        dataset: batched `tf.data.Dataset` of `(images, labels)` or
            `(images, labels, object_masks)`.
        fractions: numbers in `(0, 1]`.
        fill_value: float, the occluder's value in the model's input space,
            or a sequence of floats, one per image channel.
        seed: int.
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar`
            over the batches, as the `verbose` of `model.evaluate`, showing
            the accuracy so far without occlusion (`clean`) and for each
            fraction (e.g. `10%`).

    Returns:
        A JSON-serialisable dict: `"fractions"` (list), `"covered_fractions"`
        (list, `side**2 / (H * W)`, the area actually covered),
        `"accuracy"` (list, one per fraction), `"clean_accuracy"`,
        `"fill_value"` (a float, or a list per channel), `"seed"`,
        `"num_images"`.

    Example:

    >>> result = occlusion_robustness(model, test)
    >>> len(result["accuracy"]) == len(result["fractions"])
    True
    """
    fill_value = check_fill_value(fill_value, "`occlusion_robustness`")
    fractions = check_fractions(fractions, "`occlusion_robustness`")
    seed = validation.check_integer("`occlusion_robustness`", "seed", seed,
                                    minimum=0)
    generators = [np.random.default_rng([seed, i])
                  for i in range(len(fractions))]
    correct = np.zeros(len(fractions), np.int64)
    clean = 0
    num_images = 0
    size = None

    def running():
        return [("clean", clean / num_images)] + [
            (f"{fraction:.0%}", count / num_images)
            for fraction, count in zip(fractions, correct)
        ]

    for images, labels, _ in iterate_batches(
        dataset, "`occlusion_robustness`", verbose=verbose, values=running
    ):
        batch, height, width = images.shape[0], images.shape[1], images.shape[2]
        size = (height, width)
        # Before `occlude` checks it too, so that the error names this
        # function.
        check_fill_value(fill_value, "`occlusion_robustness`", images.shape[-1])
        clean += _count_correct(model, images, labels)
        for i, fraction in enumerate(fractions):
            regions = random_square_regions(batch, height, width, fraction,
                                            generators[i])
            correct[i] += _count_correct(
                model, occlude(images, regions, fill_value), labels
            )
        num_images += batch
    if num_images == 0:
        raise validation.invalid("`occlusion_robustness`", "dataset",
                                 "a non-empty dataset",
                                 received="an empty one")
    covered = [square_side(*size, f) ** 2 / (size[0] * size[1])
               for f in fractions]
    return {
        "fractions": fractions,
        "covered_fractions": covered,
        "accuracy": (correct / num_images).tolist(),
        "clean_accuracy": clean / num_images,
        "fill_value": fill_value,
        "seed": seed,
        "num_images": num_images,
    }


def object_occlusion(model, dataset, region="mask", fill_value=0.5, *,
                     verbose=0):
    """Accuracy when the object itself is covered.

    Args:
        model: a `keras.Model` mapping images to class scores.
        dataset: batched `tf.data.Dataset` of
            `(images, labels, object_masks)`.
        region: `"mask"` to cover the object's pixels (its object mask),
            `"box"` to cover its bounding box.
        fill_value: float, the occluder's value in the model's input space,
            or a sequence of floats, one per image channel.
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar`
            over the batches, as the `verbose` of `model.evaluate`, showing
            the accuracy so far without (`clean`) and with the object
            covered (`covered`).

    Returns:
        A JSON-serialisable dict: `"accuracy"`, `"clean_accuracy"`,
        `"region"`, `"covered_fraction"` (mean fraction of the image
        covered), `"fill_value"` (a float, or a list per channel),
        `"num_images"` (images with an object), `"num_skipped"` (images
        whose object mask is empty: nothing to cover, left out as
        `localization_scores` leaves them out).

    Example:

    >>> result = object_occlusion(model, test_with_object_masks, region="box")
    >>> result["num_images"], 0.0 <= result["accuracy"] <= 1.0
    (8, True)
    """
    validation.check_choice("`object_occlusion`", "region", region,
                            OBJECT_REGIONS)
    fill_value = check_fill_value(fill_value, "`object_occlusion`")
    correct = 0
    clean = 0
    covered = 0.0
    num_images = 0
    skipped = 0

    def running():
        seen = max(num_images, 1)
        return [("clean", clean / seen), ("covered", correct / seen)]

    for images, labels, object_masks in iterate_batches(
        dataset, "`object_occlusion`", require_object_masks=True,
        verbose=verbose, values=running,
    ):
        check_fill_value(fill_value, "`object_occlusion`", images.shape[-1])
        regions = tf.cast(object_masks >= 0.5, tf.float32)
        has_object = tf.reduce_any(regions > 0, axis=(1, 2))
        skipped += int(tf.reduce_sum(tf.cast(~has_object, tf.int32)))
        images, labels, regions = (tf.boolean_mask(values, has_object)
                                   for values in (images, labels, regions))
        if not images.shape[0]:
            continue
        if region == "box":
            regions = bounding_box_regions(regions)
        clean += _count_correct(model, images, labels)
        correct += _count_correct(
            model, occlude(images, regions, fill_value), labels
        )
        covered += float(tf.reduce_sum(tf.reduce_mean(regions, axis=(1, 2))))
        num_images += int(images.shape[0])
    if num_images == 0:
        raise no_object_error("`object_occlusion`", "dataset", skipped)
    return {
        "accuracy": correct / num_images,
        "clean_accuracy": clean / num_images,
        "region": region,
        "covered_fraction": covered / num_images,
        "fill_value": fill_value,
        "num_images": num_images,
        "num_skipped": skipped,
    }
