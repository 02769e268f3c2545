"""IoU at a threshold chosen on validation data, applied to test data."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import localization
from keras_ersm.evaluation import validated_iou


def _dataset(maps, object_masks):
    """Images that carry a 2x2 token map upsampled to 4x4 (one channel)."""
    maps = np.asarray(maps, np.float32)
    images = np.repeat(np.repeat(maps, 2, axis=1), 2, axis=2)[..., None]
    return tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(len(maps), np.int32),
         np.asarray(object_masks, np.float32))).batch(2)


def token_map(images, labels):
    return tf.nn.avg_pool2d(images, 2, 2, "VALID")[..., 0]


# The object is the top-left token; the map is 1 there, 0.6 on the token to
# its right, 0 elsewhere (already in [0, 1]).
OBJECT = np.zeros((4, 4))
OBJECT[:2, :2] = 1.0
MAP = np.array([[1.0, 0.6], [0.0, 0.0]])


def test_the_threshold_is_chosen_on_validation_and_applied_to_test():
    # On validation the object spans both top tokens: any threshold <= 0.6
    # is best (IoU 1), the lowest such is 0.1 (0 would add the bottom row).
    wide = np.zeros((4, 4))
    wide[:2] = 1.0
    validation_data = _dataset([MAP] * 3, [wide] * 3)
    test = _dataset([MAP] * 2, [OBJECT] * 2)
    thresholds = [0.0, 0.1, 0.6, 0.7, 1.0]
    result = validated_iou(token_map, validation_data, test,
                           thresholds=thresholds, method="nearest")
    assert result["threshold"] == 0.1
    assert result["validation_iou_mean"] == 1.0
    # On test the top row is predicted, half of it the object: 0.5, though
    # 0.7 would have scored 1 there.
    assert result["iou_mean"] == 0.5 and result["iou_std"] == 0.0
    expected = localization.mask_iou(np.array([MAP] * 2), [OBJECT] * 2, 0.1,
                                     "nearest")
    np.testing.assert_array_equal(expected, [0.5, 0.5])
    assert result["validation_curve"] == {
        "thresholds": thresholds, "iou_mean": [0.5, 1.0, 1.0, 0.5, 0.5]}
    assert result["num_images"] == 2 and result["validation_num_images"] == 3
    assert result["normalized"] is True and result["method"] == "nearest"


def test_constant_maps_normalise_to_zero_and_tie_at_the_lowest_threshold():
    # A constant map becomes 0 everywhere: threshold 0 predicts the whole
    # image (IoU 4 / 16), every higher one nothing (IoU 0).
    data = _dataset([np.full((2, 2), 0.7)] * 2, [OBJECT] * 2)
    result = validated_iou(token_map, data, data, method="nearest")
    assert result["threshold"] == 0.0
    assert result["iou_mean"] == pytest.approx(0.25)
    # Unnormalised, 0.0 to 0.7 all predict everything: the lowest is kept.
    raw = validated_iou(token_map, data, data, normalize=False,
                        method="nearest")
    assert raw["threshold"] == 0.0 and raw["iou_mean"] == pytest.approx(0.25)
    assert max(raw["validation_curve"]["iou_mean"]) == pytest.approx(0.25)


def test_images_without_an_object_are_left_out_and_counted():
    test = _dataset([MAP, MAP, MAP], [OBJECT, np.zeros((4, 4)), OBJECT])
    result = validated_iou(token_map, test, test, method="nearest")
    assert result["num_images"] == 2 and result["num_skipped"] == 1
    assert result["iou_mean"] == 1.0  # thresholds in (0.6, 1]
    assert result["threshold"] == 0.61
    with pytest.raises(ValueError, match=r"`validated_iou`: argument "
                       r"`validation_data` must be a dataset with an object "
                       r"in some "
                       r"image; received 2 images whose object masks are all "
                       r"empty\."):
        validated_iou(token_map, _dataset([MAP] * 2, [np.zeros((4, 4))] * 2),
                      test)
    with pytest.raises(ValueError, match=r"`validated_iou`: argument `test` "
                       r"must be a dataset with an object in some image; "
                       r"received an empty one\."):
        validated_iou(token_map, test, test.take(0))


@pytest.mark.parametrize("kwargs, match", [
    ({"thresholds": 0.5}, r"`thresholds` must be a non-empty, increasing "
                          r"sequence of finite numbers; received 0.5\. Pass "
                          r"\[0.5\]\."),
    ({"thresholds": [0.2, 0.2]}, r"`thresholds` must be a non-empty, "
                                 r"increasing sequence of finite numbers; "
                                 r"received \[0.2, 0.2\]\."),
    ({"thresholds": []}, r"`thresholds` must be a non-empty"),
    ({"method": "cubic"}, r"`method` must be one of \('bilinear', "
                          r"'nearest', 'area'\); received 'cubic'\."),
    ({"normalize": 1}, r"`normalize` must be True or False; received 1\."),
])
def test_bad_arguments_name_the_function(kwargs, match):
    data = _dataset([MAP], [OBJECT])
    with pytest.raises(ValueError, match=r"`validated_iou`: argument " + match):
        validated_iou(token_map, data, data, **kwargs)
