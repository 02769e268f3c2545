"""PxAP: exact average precision against scikit-learn and closed forms, and
its pooling over a dataset."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import average_precision
from keras_ersm.evaluation import ersm_maps
from keras_ersm.evaluation import object_tokens
from keras_ersm.evaluation import pxap

from ersm_test_models import REGION
from ersm_test_models import region_ersm_model

metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_equals_scikit_learn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 300))
    labels = rng.random(size) < rng.uniform(0.05, 0.9)
    labels[0] = True  # at least one positive
    scores = rng.normal(size=size) + labels * rng.uniform(0, 2)
    # Rounded to few values: many ties, across positives and negatives.
    for values in (scores, np.round(scores, 1), np.round(scores)):
        assert average_precision(values, labels) == pytest.approx(
            metrics.average_precision_score(labels, values), abs=1e-12)


def test_average_precision_closed_forms():
    # Every positive first: 1. A constant score: the share of positives.
    assert average_precision([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert average_precision(np.zeros(8), [1, 0, 0, 1, 0, 0, 0, 0]) == 0.25
    # Every one of n positives last among N: mean over k of k / (N - n + k).
    n, total = 3, 10
    scores = np.arange(total)[::-1]  # rank 1 first
    labels = np.zeros(total, bool)
    labels[-n:] = True
    expected = np.mean([k / (total - n + k) for k in range(1, n + 1)])
    assert average_precision(scores, labels) == pytest.approx(expected)
    # One positive tied with one negative at the top: precision 1/2.
    assert average_precision([1, 1, 0], [1, 0, 0]) == 0.5
    assert average_precision([1, 1], [1, 1]) == 1.0
    assert np.isnan(average_precision([0.2, 0.1], [0, 0]))


def test_average_precision_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`average_precision`: argument "
                       r"`labels` must be an array of the size of `scores` "
                       r"\(3\); received 2 labels\."):
        average_precision([1, 2, 3], [1, 0])
    with pytest.raises(ValueError, match=r"`average_precision`: argument "
                       r"`scores` must be an array of finite numbers; "
                       r"received 1 NaN or infinite scores\."):
        average_precision([1, np.nan], [1, 0])


def _dataset(maps, object_masks, batch=2):
    """Images that carry a token map upsampled by 2 (one channel)."""
    maps = np.asarray(maps, np.float32)
    images = np.repeat(np.repeat(maps, 2, axis=1), 2, axis=2)[..., None]
    labels = np.zeros(len(maps), np.int32)
    return tf.data.Dataset.from_tensor_slices(
        (images, labels, np.asarray(object_masks, np.float32))).batch(batch)


def token_map(images, labels):
    return tf.nn.avg_pool2d(images, 2, 2, "VALID")[..., 0]


def test_pxap_pools_every_token_of_the_dataset():
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(5, 4, 4))
    object_masks = np.zeros((5, 8, 8))
    for i in range(5):
        top, left = rng.integers(0, 5, size=2)
        object_masks[i, top:top + 3, left:left + 4] = 1.0
    dataset = _dataset(maps, object_masks)
    result = pxap(token_map, dataset, normalize=False)
    labels = object_tokens(object_masks, (4, 4))
    expected = metrics.average_precision_score(labels.ravel(), maps.ravel())
    assert result["pxap"] == pytest.approx(expected, abs=1e-6)
    assert result["base_rate"] == pytest.approx(labels.mean())
    assert result["num_tokens"] == 80 and result["num_images"] == 5
    assert result["grid"] == [4, 4] and result["num_skipped"] == 0
    # Min-max normalised per image (the default) before pooling.
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    normalized = pxap(token_map, dataset)
    assert normalized["normalized"] is True
    assert normalized["pxap"] == pytest.approx(
        metrics.average_precision_score(
            labels.ravel(), ((maps - low) / (high - low)).ravel()), abs=1e-6)


def test_per_image_normalisation_compares_tokens_across_images():
    # Image 0's map is ten times image 1's: pooled raw, image 0's background
    # outranks image 1's object; normalised per image, every object token
    # comes first.
    maps = np.array([[[10.0, 5.0], [0.0, 0.0]], [[1.0, 0.5], [0.0, 0.0]]])
    object_masks = np.zeros((2, 4, 4))
    object_masks[:, :2, :2] = 1.0  # the top-left token
    dataset = _dataset(maps, object_masks)
    assert pxap(token_map, dataset)["pxap"] == 1.0
    assert pxap(token_map, dataset, normalize=False)["pxap"] == pytest.approx(
        (1 / 1 + 2 / 3) / 2)


def test_constant_maps_score_the_base_rate_and_empty_masks_are_skipped():
    object_masks = np.zeros((3, 4, 4))
    object_masks[0, :2, :2] = 1.0
    object_masks[1, 2:, :] = 1.0
    dataset = _dataset(np.full((3, 2, 2), 0.3), object_masks)
    result = pxap(token_map, dataset)
    assert result["pxap"] == pytest.approx(3 / 8)  # 3 object tokens of 8
    assert result["num_images"] == 2 and result["num_skipped"] == 1
    with pytest.raises(ValueError, match=r"`pxap`: argument `dataset` must "
                       r"be a dataset with an object in some image; received "
                       r"2 images whose object masks are all empty\."):
        pxap(token_map, _dataset(np.ones((2, 2, 2)), np.zeros((2, 4, 4))))


def test_a_map_on_a_finer_grid_is_area_pooled_onto_the_token_grid():
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 4.0  # a quarter of the top-left 2x2 token
    maps[0, 3, 3] = 1.0
    object_masks = np.zeros((1, 8, 8))
    object_masks[0, :4, :4] = 1.0
    dataset = _dataset(maps, object_masks)
    result = pxap(token_map, dataset, grid_shape=(2, 2))
    assert result["grid"] == [2, 2] and result["num_tokens"] == 4
    assert result["pxap"] == 1.0  # token means 1, 0, 0, 0.25


def test_pxap_of_an_ersm_models_keep_probabilities():
    # The region's scores (-5) keep it more than the rest (-3): a perfect
    # ranking of the object's tokens.
    model = region_ersm_model()
    images = np.ones((2, 4, 4, 1), np.float32)
    object_masks = np.repeat(REGION[None], 2, axis=0)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(2, np.int32), object_masks)).batch(2)
    result = pxap(ersm_maps(model, grid="keep"), dataset)
    assert result["pxap"] == 1.0 and result["base_rate"] == 0.25
    reversed_model = region_ersm_model(region_score=-3.0, other_score=-5.0)
    result = pxap(ersm_maps(reversed_model, grid="keep"), dataset)
    # Every object token last, all tied (normalised to 0): they enter the
    # ranking together with the whole grid, at precision 8 / 32.
    assert result["pxap"] == 0.25
