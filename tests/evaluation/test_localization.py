import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import localization
from keras_ersm.evaluation import maps

from ersm_test_models import REGION
from ersm_test_models import region_ersm_model

MASK = np.zeros((1, 4, 4), np.float32)
MASK[0, :2, :3] = 1.0  # 6 object pixels


def test_mask_iou_by_hand():
    token_map = np.array([[[0.9, 0.1], [0.2, 0.3]]], np.float32)
    # Nearest upsampling keeps the top-left 2 x 2 block: 4 / 6.
    iou = localization.mask_iou(token_map, MASK, method="nearest")
    np.testing.assert_allclose(iou, [4 / 6])
    iou = localization.mask_iou(token_map, MASK, threshold=0.05,
                                method="nearest")
    np.testing.assert_allclose(iou, [6 / 16])
    empty = localization.mask_iou(np.zeros((1, 2, 2)), np.zeros((1, 4, 4)))
    np.testing.assert_allclose(empty, [1.0])


def test_pointing_game_uses_the_centre_of_the_maximum_token():
    # Token (0, 1) of a 2 x 2 grid points at pixel (1, 3): off the object;
    # token (0, 0) at (1, 1): on it.
    maps_ = np.array([[[0.1, 0.9], [0.2, 0.3]], [[0.9, 0.1], [0.2, 0.3]]])
    hits = localization.pointing_hits(maps_, np.repeat(MASK, 2, axis=0))
    assert hits.tolist() == [False, True]


def test_localization_scores_skip_empty_masks_and_normalize():
    masks = np.concatenate([MASK, np.zeros((1, 4, 4), np.float32)])
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32), masks)
    ).batch(2)

    def map_fn(images, labels):
        # min-max normalisation turns 2, 1, 1, 1 into 1, 0, 0, 0.
        return tf.constant([[[2.0, 1.0], [1.0, 1.0]]] * 2)

    result = localization.localization_scores(
        map_fn, dataset, normalize=True, method="nearest"
    )
    assert result["iou_mean"] == pytest.approx(4 / 6)
    assert result["pointing_accuracy"] == 1.0
    assert result["num_images"] == 1 and result["num_skipped"] == 1
    assert result["normalized"] is True
    raw = localization.localization_scores(map_fn, dataset, method="nearest")
    assert raw["iou_mean"] == pytest.approx(6 / 16)  # all >= 0.5
    with pytest.raises(ValueError, match=r"`localization_scores`: argument "
                       r"`threshold` must be a finite number; received "
                       r"nan\."):
        localization.localization_scores(map_fn, dataset,
                                         threshold=float("nan"))
    with pytest.raises(ValueError, match=r"`localization_scores`: argument "
                       r"`dataset` must be a dataset with an object in some "
                       r"image; received 1 images whose object masks are "
                       r"all empty\."):
        localization.localization_scores(maps.whole_image_maps(),
                                         dataset.unbatch().skip(1).batch(2))


def test_the_whole_image_scores_the_object_share_and_the_centre():
    masks = np.zeros((2, 5, 5), np.float32)
    masks[0, 1:4, 1:4] = 1.0  # 9 of 25 pixels, around the centre pixel
    masks[1, 0, :] = 1.0  # 5 of 25, the top row
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((2, 5, 5, 3), np.float32), np.zeros(2, np.int32), masks)
    ).batch(2)
    result = localization.localization_scores(maps.whole_image_maps(),
                                              dataset)
    assert result["iou_mean"] == pytest.approx((9 / 25 + 5 / 25) / 2)
    assert result["pointing_accuracy"] == 0.5


def test_localization_reads_single_channel_masks_and_rejects_others():
    # (B, H, W, 1) masks are read as (B, H, W); several channels are an
    # error, not their first channel.
    def map_fn(images, labels):
        return tf.constant([[[2.0, 1.0], [1.0, 1.0]]])

    def scores(masks):
        dataset = tf.data.Dataset.from_tensor_slices(
            (np.zeros((1, 4, 4, 1), np.float32), np.zeros(1, np.int32), masks)
        ).batch(1)
        return localization.localization_scores(
            map_fn, dataset, normalize=True, method="nearest"
        )

    assert scores(MASK[..., None])["iou_mean"] == pytest.approx(4 / 6)
    three = np.stack([np.zeros_like(MASK), MASK, np.zeros_like(MASK)], -1)
    with pytest.raises(ValueError, match=r"`localization_scores`: argument "
                       r"`dataset` must be a dataset of object masks .*"
                       r"`\(batch, height, width, 1\)` with the images' "
                       r"height and width \(4, 4\); received object masks "
                       r"of shape \(1, 4, 4, 3\)\."):
        scores(three)


def test_maps_of_an_ersm_model():
    # keep = sigmoid(5) = 0.9933 on R, sigmoid(3) = 0.9526 elsewhere.
    model = region_ersm_model()
    image = np.where(REGION > 0, 1.0, 2.0).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        (image[None, :, :, None], np.zeros(1, np.int32), REGION[None])
    ).batch(1)
    keep = maps.ersm_maps(model)
    strict = localization.localization_scores(keep, dataset, threshold=0.97)
    assert strict["iou_mean"] == pytest.approx(1.0)
    assert strict["pointing_accuracy"] == 1.0
    loose = localization.localization_scores(keep, dataset)
    assert loose["iou_mean"] == pytest.approx(4 / 16)
    norms = maps.magnitude_maps(model)(image[None, :, :, None], None)
    np.testing.assert_allclose(norms[0], image)
    magnitude = localization.localization_scores(
        maps.magnitude_maps(model), dataset, normalize=True
    )
    assert magnitude["pointing_accuracy"] == 0.0  # the largest tokens are off R
    with pytest.raises(ValueError, match=r"`ersm_maps`: argument `grid` "
                       r"must be one of \('mask', 'keep'\); received "
                       r"'score'\."):
        maps.ersm_maps(model, grid="score")
    with pytest.raises(ValueError, match=r"`gradcam_maps`: argument "
                       r"`target` must be one of \('predicted', 'label'\); "
                       r"received 'best'\."):
        maps.gradcam_maps(model, target="best")


def test_iou_by_threshold_equals_mask_iou_at_each_threshold():
    rng = np.random.default_rng(0)
    token_maps = rng.uniform(-0.2, 1.2, size=(6, 4, 4)).astype(np.float32)
    masks = (rng.uniform(size=(6, 16, 16)) > 0.6).astype(np.float32)
    masks[2] = 0.0  # no object
    token_maps[3] = 0.5  # constant: ties everywhere
    thresholds = np.linspace(-0.5, 1.5, 41)
    for method in ("bilinear", "nearest"):
        curves = localization.iou_by_threshold(token_maps, masks, thresholds,
                                               method)
        expected = np.stack([
            localization.mask_iou(token_maps, masks, t, method)
            for t in thresholds], axis=1)
        np.testing.assert_array_equal(curves, expected)
    # Nothing predicted and no object: 1, as `mask_iou`.
    empty = localization.iou_by_threshold(np.zeros((1, 2, 2)),
                                          np.zeros((1, 4, 4)), [0.5])
    np.testing.assert_array_equal(empty, [[1.0]])
    with pytest.raises(ValueError, match=r"`iou_by_threshold`: argument "
                       r"`thresholds` must be a non-empty, increasing "
                       r"sequence of finite numbers; received \[0.5, 0.1\]"):
        localization.iou_by_threshold(token_maps, masks, [0.5, 0.1])
