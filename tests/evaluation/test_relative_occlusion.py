"""Occlusion relative to the object: box parts, clutter off the box, the
whole box; accuracies known by hand."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import bounding_box_regions
from keras_ersm.evaluation import box_part_regions
from keras_ersm.evaluation import object_relative_occlusion
from keras_ersm.evaluation import occlusion_robustness

from ersm_test_models import mean_threshold_model
from ersm_test_models import pooled_linear_model

# A 4x4 object in the middle of 8x8 images.
OBJECT = np.zeros((8, 8), np.float32)
OBJECT[2:6, 2:6] = 1.0


def _dataset(images, object_masks, batch=2):
    images = np.asarray(images, np.float32)
    return tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(len(images), np.int32),
         np.asarray(object_masks, np.float32))).batch(batch)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_box_parts_are_rectangles_of_the_box_inside_it(fraction):
    rng = np.random.default_rng(0)
    object_masks = np.zeros((20, 12, 16), np.float32)
    for mask in object_masks:
        top, left = rng.integers(0, 6, size=2)
        height, width = rng.integers(1, 7), rng.integers(2, 11)
        mask[top:top + height, left:left + width] = 1.0
        mask[top + height // 2, left] = 0.0  # a hole: the box stays
    object_masks[3] = 0.0  # no object: no part
    parts = box_part_regions(object_masks, fraction,
                             np.random.default_rng(1)).numpy()
    boxes = bounding_box_regions(object_masks).numpy()
    assert not parts[3].any()
    for part, box in zip(np.delete(parts, 3, 0), np.delete(boxes, 3, 0)):
        rows, columns = np.nonzero(box)
        box_h, box_w = np.ptp(rows) + 1, np.ptp(columns) + 1
        rows, columns = np.nonzero(part)
        assert np.all(box[part > 0] == 1)  # inside the box
        # A filled rectangle, sides sqrt(fraction) of the box's.
        height, width = np.ptp(rows) + 1, np.ptp(columns) + 1
        assert part.sum() == height * width
        assert height == max(1, round(np.sqrt(fraction) * box_h))
        assert width == max(1, round(np.sqrt(fraction) * box_w))
    if fraction == 1.0:
        np.testing.assert_array_equal(parts, boxes)


def test_box_parts_cover_every_position_and_do_not_depend_on_batching():
    object_masks = np.repeat(OBJECT[None], 400, axis=0)
    parts = box_part_regions(object_masks, 0.25,
                             np.random.default_rng(0)).numpy()
    # A 2x2 part in a 4x4 box starts at rows and columns 2, 3 or 4.
    tops = {int(np.nonzero(part.any(axis=1))[0][0]) for part in parts}
    lefts = {int(np.nonzero(part.any(axis=0))[0][0]) for part in parts}
    assert tops == lefts == {2, 3, 4}
    rng = np.random.default_rng(0)
    halves = [box_part_regions(object_masks[:200], 0.25, rng).numpy()
              for _ in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), parts)
    with pytest.raises(ValueError, match=r"`box_part_regions`: argument "
                       r"`fraction` must be a number in \(0, 1\]; received "
                       r"0\.\n?"):
        box_part_regions(object_masks, 0, rng)


def test_an_object_reader_ignores_clutter_and_fails_without_its_object():
    # The object is 1 on a 0 background, the occluder 0: the mean pixel is
    # the visible object's share of the image, class 0 iff > 0.2 (clean:
    # 16 / 64 = 0.25).
    images = np.repeat(OBJECT[None, ..., None], 3, axis=0)
    dataset = _dataset(images, [OBJECT] * 3)
    result = object_relative_occlusion(
        mean_threshold_model(8, 0.2), dataset, fractions=(0.25, 0.5),
        box_fractions=(0.1, 0.25, 0.5), fill_value=0.0, seed=3,
    )
    assert result["clean_accuracy"] == 1.0
    assert result["clutter"]["accuracy"] == [1.0, 1.0]
    # Parts of 1x1, 2x2 and 3x3 pixels of the 4x4 box: 15, 12 and 7 object
    # pixels left, means 0.23, 0.19, 0.11.
    assert result["box_part"]["accuracy"] == [1.0, 0.0, 0.0]
    assert result["box_part"]["covered_box_fractions"] == [
        1 / 16, 4 / 16, 9 / 16]
    assert result["whole_box"] == {"accuracy": 0.0,
                                   "covered_fraction": 16 / 64}
    assert result["num_images"] == 3 and result["num_skipped"] == 0
    assert result["seed"] == 3 and result["fill_value"] == 0.0
    assert json.loads(json.dumps(result)) == result


def test_clutter_is_the_papers_squares_with_the_box_left_visible():
    # Images of ones, occluder 0, class 0 iff the mean pixel > 0.5. A square
    # of 6x6 (half the image) always overlaps the central 4x4 box by 16
    # pixels: with the box cut out it covers 20 pixels (mean 44 / 64,
    # correct), as the paper's protocol 36 (mean 28 / 64, wrong).
    images = np.ones((5, 8, 8, 1), np.float32)
    dataset = _dataset(images, [OBJECT] * 5)
    model = mean_threshold_model(8, 0.5)
    result = object_relative_occlusion(model, dataset, fractions=(0.5,),
                                       box_fractions=(0.5,), fill_value=0.0)
    assert result["clutter"]["accuracy"] == [1.0]
    assert result["clutter"]["covered_fractions"] == [20 / 64]
    papers = occlusion_robustness(model, dataset.map(lambda *e: e[:2]),
                                  fractions=(0.5,), fill_value=0.0)
    assert papers["accuracy"] == [0.0]


def test_results_do_not_depend_on_batching_and_empty_masks_are_skipped(
        monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(7, 8, 8, 2)).astype(np.float32)
    object_masks = np.zeros((7, 8, 8), np.float32)
    for mask in object_masks:
        top, left = rng.integers(0, 4, size=2)
        mask[top:top + 4, left:left + rng.integers(2, 5)] = 1.0
    object_masks[4] = 0.0
    model = pooled_linear_model(8, [[1.0, -1.0], [-1.0, 1.0]], [0.0, 0.0])
    results = [
        object_relative_occlusion(model, _dataset(images, object_masks, b),
                                  seed=5)
        for b in (2, 7)
    ]
    assert results[0] == results[1]
    # Nor on how many occluded copies one model call classifies.
    from keras_ersm.evaluation import relative_occlusion as module

    monkeypatch.setattr(module, "_PIXELS_PER_CALL", 1)
    assert module.object_relative_occlusion(
        model, _dataset(images, object_masks, 7), seed=5) == results[0]
    assert results[0]["num_images"] == 6 and results[0]["num_skipped"] == 1
    with pytest.raises(ValueError, match=r"`object_relative_occlusion`: "
                       r"argument `dataset` must be a dataset with an object "
                       r"in some image; received 7 images whose object masks "
                       r"are all empty\."):
        object_relative_occlusion(model, _dataset(images, 0 * object_masks))


@pytest.mark.parametrize("kwargs, match", [
    ({"fractions": (0.1, 1.5)}, r"`fractions` must be a non-empty sequence "
                                r"of numbers in \(0, 1\]; received "
                                r"\[0\.1, 1\.5\]\."),
    ({"box_fractions": 0.25}, r"`box_fractions` must be a non-empty "
                              r"sequence of numbers in \(0, 1\]; received "
                              r"0\.25\. Pass \[0\.25\]\."),
    ({"seed": -1}, r"`seed` must be an integer >= 0; received -1\."),
    ({"fill_value": [0.5, 0.5]}, r"`fill_value` must be a finite number, or "
                                 r"a sequence of finite numbers, one per "
                                 r"image channel \(1\)"),
])
def test_bad_arguments_name_the_function(kwargs, match):
    dataset = _dataset(np.ones((2, 8, 8, 1)), [OBJECT] * 2)
    with pytest.raises(ValueError, match=r"`object_relative_occlusion`: "
                       r"argument " + match):
        object_relative_occlusion(mean_threshold_model(), dataset, **kwargs)
