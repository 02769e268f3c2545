"""Occlusion placed relative to the object: off it, over part of it, over
all of it.

Grey squares at random positions (`occlusion_robustness`, the paper's
protocol) hide the object as often as the background. A model that reads the
background keeps its cue under them, so their accuracy alone rewards the
shortcut. Placed relative to the object's bounding box, the same occluders
tell the two readings apart:

* (a) clutter: the paper's squares (the same positions, for the same seed) with
  the object's box left visible: a model that reads the object should not
  care;
* (b) part of the object: a random rectangle covering a given share of the box
  (`box_part_regions`): what claim 4 (robustness to structured occlusion)
  is about;
* (c) the whole object: its box covered (`object_occlusion(region="box")`): a
  model that reads the object falls towards chance; one that stays accurate
  reads something else.

On a split whose background carries the label (the benchmark's `test`) a
background reader is barely hurt by (b) and (c); on one whose background is
independent of it (`test_shuffled`) no reader keeps a background cue, which
makes (a) and (b) there the fair comparisons between models.
"""

import numpy as np
import tensorflow as tf

from keras_ersm.evaluation.accuracy import predict_classes
from keras_ersm.evaluation.data import iterate_batches
from keras_ersm.evaluation.data import no_object_error
from keras_ersm.evaluation.occlusion import DEFAULT_FRACTIONS
from keras_ersm.evaluation.occlusion import bounding_box_regions
from keras_ersm.evaluation.occlusion import box_part_regions
from keras_ersm.evaluation.occlusion import check_fill_value
from keras_ersm.evaluation.occlusion import check_fractions
from keras_ersm.evaluation.occlusion import occlude
from keras_ersm.evaluation.occlusion import random_square_regions
from keras_ersm import validation

# Pixels per call of the model: the occluded copies of one batch are
# classified together up to this many (1,024 images of 64x64; one batch of
# 224x224): each call has a fixed cost that dominates on small models.
_PIXELS_PER_CALL = 2 ** 22


def _count_correct(model, image_sets, labels):
    """Correct answers on each of `image_sets` (tensors of one shape, the
    images of `labels`), classifying several sets per model call."""
    batch, height, width = image_sets[0].shape[:3]
    per_call = max(1, _PIXELS_PER_CALL // (batch * height * width))
    counts = []
    for start in range(0, len(image_sets), per_call):
        chunk = image_sets[start:start + per_call]
        hits = tf.equal(predict_classes(model, tf.concat(chunk, axis=0)),
                        tf.tile(labels, [len(chunk)]))
        hits = tf.reshape(tf.cast(hits, tf.int32), (len(chunk), batch))
        counts += tf.reduce_sum(hits, axis=1).numpy().tolist()
    return counts


class _Occluders:
    """The random occluders, drawn per image in dataset order: the
    `i`-th clutter fraction's squares from `default_rng([seed, i])` (the
    streams of `occlusion_robustness`), the `i`-th box fraction's parts
    from `default_rng([seed, i, 1])`."""

    def __init__(self, fractions, box_fractions, seed):
        self.fractions = fractions
        self.box_fractions = box_fractions
        self.square_streams = [np.random.default_rng([seed, i])
                               for i in range(len(fractions))]
        self.part_streams = [np.random.default_rng([seed, i, 1])
                             for i in range(len(box_fractions))]

    def draw(self, object_masks):
        """`(squares, parts)`: per fraction, the regions of every image of
        the batch with the `(B, H, W)` `object_masks`."""
        batch, height, width = object_masks.shape
        squares = [random_square_regions(batch, height, width, fraction,
                                         stream)
                   for fraction, stream in zip(self.fractions,
                                               self.square_streams)]
        parts = [box_part_regions(object_masks, fraction, stream)
                 for fraction, stream in zip(self.box_fractions,
                                             self.part_streams)]
        return squares, parts


def _covered_shares(regions, box, num_clutter):
    """Per region (clutter..., box parts..., whole box), the share each
    image has covered: of its box for the parts, of the image otherwise."""
    image_area = box.shape[1] * box.shape[2]
    box_area = tf.reduce_sum(box, axis=(1, 2))
    shares = []
    for k, region in enumerate(regions):
        area = tf.reduce_sum(region, axis=(1, 2))
        is_part = num_clutter <= k < len(regions) - 1
        shares.append((area / box_area if is_part else area / image_area)
                      .numpy())
    return shares


class _RelativeOcclusionTally:
    """Correct answers and covered shares per condition (clutter...,
    box parts..., whole box), summed over the batches of
    `object_relative_occlusion`: its running state and its result."""

    def __init__(self, caller, fractions, box_fractions):
        self.caller = caller
        self.fractions = fractions
        self.box_fractions = box_fractions
        conditions = len(fractions) + len(box_fractions) + 1
        self.clutter = slice(0, len(fractions))
        self.part = slice(len(fractions), conditions - 1)
        self.correct = np.zeros(conditions, np.int64)
        self.covered = [[] for _ in range(conditions)]
        self.clean = 0
        self.num_images = 0
        self.num_skipped = 0

    def add(self, counts, shares, num_images):
        """Count a batch: `counts` of correct answers, clean first, then per
        condition; `shares`, per condition, each image's covered share."""
        self.clean += counts[0]
        self.correct += counts[1:]
        for covered, batch_shares in zip(self.covered, shares):
            covered.append(batch_shares)
        self.num_images += num_images

    def running(self):
        """The progress bar's values: the running accuracies."""
        seen = max(self.num_images, 1)
        return [
            ("clean", self.clean / seen),
            ("clutter", self.correct[self.clutter].mean() / seen),
            ("part", self.correct[self.part].mean() / seen),
            ("box", self.correct[-1] / seen),
        ]

    def result(self, fill_value, seed):
        """The result of `object_relative_occlusion`."""
        if self.num_images == 0:
            raise no_object_error(self.caller, "dataset", self.num_skipped)
        accuracy = (self.correct / self.num_images).tolist()
        # Means of per-image shares, in dataset order: the same for any
        # batching.
        covered = [float(np.mean(np.concatenate(shares), dtype=np.float64))
                   for shares in self.covered]
        return {
            "clean_accuracy": self.clean / self.num_images,
            "clutter": {"fractions": self.fractions,
                        "covered_fractions": covered[self.clutter],
                        "accuracy": accuracy[self.clutter]},
            "box_part": {"fractions": self.box_fractions,
                         "covered_box_fractions": covered[self.part],
                         "accuracy": accuracy[self.part]},
            "whole_box": {"accuracy": accuracy[-1],
                          "covered_fraction": covered[-1]},
            "fill_value": fill_value,
            "seed": seed,
            "num_images": self.num_images,
            "num_skipped": self.num_skipped,
        }


# Shares of the object's box hidden; a quarter is where the occlusion target
# of `ersm summarize` reads.
BOX_FRACTIONS = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5)


def object_relative_occlusion(model, dataset, fractions=DEFAULT_FRACTIONS,
                              box_fractions=BOX_FRACTIONS, fill_value=0.5,
                              seed=0, verbose=0):
    """Accuracy with clutter off the object, part of it and all of it hidden.

    Random draws are made per image in dataset order, for every image (also
    those left out), from `numpy.random.default_rng([seed, i])` for the
    `i`-th clutter fraction (the streams of `occlusion_robustness`, whose
    squares these are) and `numpy.random.default_rng([seed, i, 1])` for the
    `i`-th box fraction: two models evaluated with the same seed on the
    same (unshuffled) dataset see the same occluders.

    Args:
        model: a `keras.Model` mapping images to class scores.
        dataset: batched `tf.data.Dataset` of
            `(images, labels, object_masks)`; images whose object mask is
            empty are left out and counted.
        fractions: numbers in `(0, 1]`, the image share of each clutter
            square before the box is cut out of it (see `square_side`).
        box_fractions: numbers in `(0, 1]`, the shares of the object's box
            to hide (see `box_part_regions`).
        fill_value: float, the occluder's value in the model's input space,
            or a sequence of floats, one per image channel.
        seed: int >= 0.
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar` over
            the batches, showing the running clean accuracy, the mean over
            clutter fractions, over box fractions and with the whole box
            hidden.

    Returns:
        A JSON-serialisable dict: `"clean_accuracy"`; `"clutter"`:
        `{"fractions", "covered_fractions"` (mean share of the image
        actually covered), `"accuracy"}`; `"box_part"`: `{"fractions",
        "covered_box_fractions"` (mean share of the box actually covered),
        `"accuracy"}`; `"whole_box"`: `{"accuracy", "covered_fraction"}`;
        `"fill_value"`, `"seed"`, `"num_images"` (images with an object),
        `"num_skipped"`.

    Example:

    >>> result = object_relative_occlusion(model, test_with_object_masks,
    ...                                    fractions=[0.1],
    ...                                    box_fractions=[0.25, 0.5])
    >>> result["num_images"], len(result["box_part"]["accuracy"])
    (8, 2)
    >>> result["box_part"]["covered_box_fractions"]  # of an 8x8 box
    [0.25, 0.5625]
    """
    caller = "`object_relative_occlusion`"
    fractions = check_fractions(fractions, caller)
    box_fractions = check_fractions(box_fractions, caller, "box_fractions")
    fill_value = check_fill_value(fill_value, caller)
    seed = validation.check_integer(caller, "seed", seed, minimum=0)
    occluders = _Occluders(fractions, box_fractions, seed)
    tally = _RelativeOcclusionTally(caller, fractions, box_fractions)
    for images, labels, object_masks in iterate_batches(
        dataset, caller, require_object_masks=True, verbose=verbose,
        values=tally.running,
    ):
        check_fill_value(fill_value, caller, images.shape[-1])
        # Drawn for every image before any is left out.
        squares, parts = occluders.draw(object_masks)
        has_object = tf.reduce_any(object_masks >= 0.5, axis=(1, 2))
        tally.num_skipped += int(tf.reduce_sum(tf.cast(~has_object, tf.int32)))
        if not bool(tf.reduce_any(has_object)):
            continue
        images, labels, object_masks = (
            tf.boolean_mask(values, has_object)
            for values in (images, labels, object_masks))
        box = bounding_box_regions(object_masks)
        regions = (
            [tf.boolean_mask(square, has_object) * (1.0 - box)
             for square in squares]
            + [tf.boolean_mask(part, has_object) for part in parts]
            + [box]
        )
        counts = _count_correct(
            model, [images] + [occlude(images, region, fill_value)
                               for region in regions], labels)
        tally.add(counts, _covered_shares(regions, box, len(fractions)),
                  num_images=int(images.shape[0]))
    return tally.result(fill_value, seed)
