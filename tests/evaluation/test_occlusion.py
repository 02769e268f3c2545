import json

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import occlusion

from ersm_test_models import mean_threshold_model
from ersm_test_models import pooled_linear_model
from ersm_test_models import region_baseline_model


def test_square_side():
    assert occlusion.square_side(8, 8, 0.25) == 4
    assert occlusion.square_side(8, 8, 0.5) == 6  # round(sqrt(32)) = 6
    assert occlusion.square_side(4, 16, 1.0) == 4  # at most min(H, W)
    with pytest.raises(ValueError, match=r"`square_side`: argument "
                       r"`fraction` must be a number in \(0, 1\]; received "
                       r"0\.0\."):
        occlusion.square_side(8, 8, 0.0)


def test_random_squares_are_inside_and_batching_invariant():
    regions = occlusion.random_square_regions(
        6, 8, 10, 0.2, np.random.default_rng(3)
    ).numpy()
    side = occlusion.square_side(8, 10, 0.2)
    assert np.all(regions.sum(axis=(1, 2)) == side * side)
    for square in regions:
        rows, columns = np.nonzero(square)
        assert rows.max() - rows.min() == side - 1
        assert columns.max() - columns.min() == side - 1
    rng = np.random.default_rng(3)
    halves = [occlusion.random_square_regions(3, 8, 10, 0.2, rng).numpy()
              for _ in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), regions)


def test_occlusion_accuracy_by_covered_area():
    # Images of ones, fill 0: the mean pixel is 1 - covered area, and the
    # model says class 0 iff that mean > 0.5. 8 x 8 images: fraction 0.25 ->
    # side 4 (mean 0.75, correct); 0.5 -> side 6 (mean 0.4375, wrong).
    images = np.ones((5, 8, 8, 1), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(5, np.int32))
    ).batch(2)
    result = occlusion.occlusion_robustness(
        mean_threshold_model(), dataset, fractions=(0.25, 0.5),
        fill_value=0.0, seed=7,
    )
    assert result["accuracy"] == [1.0, 0.0]
    assert result["clean_accuracy"] == 1.0
    assert result["covered_fractions"] == [16 / 64, 36 / 64]
    assert result["num_images"] == 5 and result["seed"] == 7
    with pytest.raises(ValueError, match=r"`occlusion_robustness`: "
                       r"argument `fractions` must be a non-empty sequence "
                       r"of numbers in \(0, 1\]; received \[0\.1, 1\.5\]\."):
        occlusion.occlusion_robustness(mean_threshold_model(), dataset,
                                       fractions=(0.1, 1.5))
    # NumPy numbers are numbers; the result stays JSON-serialisable.
    numpy_args = occlusion.occlusion_robustness(
        mean_threshold_model(), dataset,
        fractions=(np.float32(0.25), np.float64(0.5)), fill_value=0.0,
        seed=np.int64(7),
    )
    assert json.loads(json.dumps(numpy_args)) == result
    for bad, message in (
        ({"fractions": 0.25}, r"argument `fractions` must be a non-empty "
                              r"sequence of numbers in \(0, 1\]; received "
                              r"0\.25\. Pass \[0\.25\]\."),
        ({"fractions": ()}, r"argument `fractions` must be a non-empty "
                            r"sequence of numbers in \(0, 1\]; received "
                            r"\[\]\."),
        ({"seed": None}, r"argument `seed` must be an integer >= 0; "
                         r"received None\."),
        ({"seed": -1}, r"argument `seed` must be an integer >= 0; "
                       r"received -1\."),
    ):
        with pytest.raises(ValueError,
                           match=r"`occlusion_robustness`: " + message):
            occlusion.occlusion_robustness(mean_threshold_model(), dataset,
                                           **bad)


def test_every_model_sees_the_same_occluders_for_a_seed():
    # 8 x 8 images of ones, fill 0, R the top-left 4 x 4 block: logit0 =
    # mean_R(x) - sum(x off R) / 64 = 0.25 + s**2 / 64 - 5 c / 64 for a
    # square of side s covering c pixels of R, so an image stays class 0
    # iff 5 c < 16 + s**2: accuracy depends on where the squares fall.
    region = np.zeros((8, 8), np.float32)
    region[:4, :4] = 1.0
    model = region_baseline_model(region=region, size=8)
    images = np.ones((40, 8, 8, 1), np.float32)
    fractions = (0.1, 0.25, 0.5)

    def accuracy(seed, batch_size):
        dataset = tf.data.Dataset.from_tensor_slices(
            (images, np.zeros(40, np.int32))
        ).batch(batch_size)
        return occlusion.occlusion_robustness(
            model, dataset, fractions=fractions, fill_value=0.0, seed=seed
        )["accuracy"]

    # The squares are those of default_rng([seed, i]), i the fraction's
    # index, whatever the batching.
    expected = []
    for i, fraction in enumerate(fractions):
        side = occlusion.square_side(8, 8, fraction)
        squares = occlusion.random_square_regions(
            40, 8, 8, fraction, np.random.default_rng([5, i])
        ).numpy()
        covered = (squares * region).sum(axis=(1, 2))
        expected.append(np.mean(5 * covered < 16 + side * side))
    assert 0.0 < min(expected) and max(expected) < 1.0
    assert accuracy(5, 3) == pytest.approx(expected)
    assert accuracy(5, 40) == pytest.approx(expected)
    assert accuracy(6, 40) != pytest.approx(expected)


def test_object_occlusion_with_object_masks_and_boxes():
    # Object: a 2 x 3 L-shape (4 pixels) in an 8 x 8 image of ones, fill 0.
    object_masks = np.zeros((2, 8, 8), np.float32)
    object_masks[:, 1, 1:4] = 1.0
    object_masks[:, 2, 1] = 1.0
    box = occlusion.bounding_box_regions(tf.constant(object_masks)).numpy()
    expected_box = np.zeros((8, 8), np.float32)
    expected_box[1:3, 1:4] = 1.0
    np.testing.assert_array_equal(box[0], expected_box)
    empty = occlusion.bounding_box_regions(tf.zeros((1, 3, 3))).numpy()
    assert empty.sum() == 0.0

    images = np.ones((2, 8, 8, 1), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(2, np.int32), object_masks[..., None])
    ).batch(2)
    # Mean 1 - 4/64 and 1 - 6/64: still class 0 with threshold 0.92.
    model = mean_threshold_model(threshold=0.92)
    by_mask = occlusion.object_occlusion(model, dataset, "mask", 0.0)
    by_box = occlusion.object_occlusion(model, dataset, "box", 0.0)
    assert by_mask["accuracy"] == 1.0
    assert by_box["accuracy"] == 0.0
    assert by_mask["covered_fraction"] == pytest.approx(4 / 64)
    assert by_box["covered_fraction"] == pytest.approx(6 / 64)
    plain = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(2, np.int32))
    ).batch(2)
    with pytest.raises(ValueError, match="needs object masks"):
        occlusion.object_occlusion(model, plain)
    with pytest.raises(ValueError, match=r"`object_occlusion`: argument "
                       r"`region` must be one of \('mask', 'box'\); "
                       r"received 'circle'\."):
        occlusion.object_occlusion(model, dataset, region="circle")


def test_object_occlusion_leaves_out_images_without_an_object():
    # Image 0: its object covered, the model errs; image 1: no object
    # (nothing to cover), would count as right.
    object_masks = np.zeros((2, 8, 8, 1), np.float32)
    object_masks[0, :6, :6] = 1.0
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.ones((2, 8, 8, 1), np.float32), np.zeros(2, np.int32), object_masks)
    ).batch(2)
    result = occlusion.object_occlusion(mean_threshold_model(), dataset,
                                        "mask", 0.0)
    assert result["accuracy"] == 0.0 and result["clean_accuracy"] == 1.0
    assert result["num_images"] == 1 and result["num_skipped"] == 1
    assert result["covered_fraction"] == 36 / 64
    empty = dataset.map(lambda x, y, m: (x, y, 0.0 * m))
    with pytest.raises(ValueError, match=r"`object_occlusion`: argument "
                       r"`dataset` must be a dataset with an object in some "
                       r"image; received 2 images whose object masks are "
                       r"all empty\."):
        occlusion.object_occlusion(mean_threshold_model(), empty)


# DenseNet121's grey pixel (torch mode): a value per channel.
GREY = [0.0655021220445633, 0.1964285671710968, 0.4177778363227844]


def test_a_per_channel_fill_value_fills_every_channel_exactly():
    rng = np.random.default_rng(0)
    images = rng.uniform(-2, 2, (3, 8, 8, 3)).astype(np.float32)
    regions = (rng.random((3, 8, 8)) < 0.5).astype(np.float32)
    occluded = occlusion.occlude(images, regions, GREY).numpy()
    covered = regions == 1.0
    expected = np.broadcast_to(np.float32(GREY), (covered.sum(), 3))
    np.testing.assert_array_equal(occluded[covered], expected)
    np.testing.assert_array_equal(occluded[~covered], images[~covered])
    # A scalar still fills every channel; a NumPy vector is one too.
    np.testing.assert_array_equal(
        occlusion.occlude(images, regions, 0.25).numpy()[covered], 0.25
    )
    np.testing.assert_array_equal(
        occlusion.occlude(images, regions, np.float32(GREY)).numpy(), occluded
    )


def _channel_difference_model(size=8, margin=0.1):
    """Class 0 iff mean(channel 0) - mean(channel 2) > margin."""
    return pooled_linear_model(
        size, [[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], [0.0, margin]
    )


def test_the_evaluations_occlude_with_a_per_channel_fill_value():
    # Black images, fully covered: only channel 0 above channel 2 (of the
    # occluder) gives class 0, the label; their mean in every channel
    # would not.
    model = _channel_difference_model()
    images = np.zeros((4, 8, 8, 3), np.float32)
    labels = np.zeros(4, np.int32)
    masks = np.ones((4, 8, 8, 1), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, labels, masks)
    ).batch(2)
    fill = [0.6, 0.5, 0.4]
    result = occlusion.occlusion_robustness(
        model, dataset.map(lambda x, y, m: (x, y)), fractions=(1.0,),
        fill_value=fill,
    )
    assert (result["clean_accuracy"], result["accuracy"]) == (0.0, [1.0])
    by_mask = occlusion.object_occlusion(model, dataset, "mask", fill)
    assert by_mask["accuracy"] == 1.0
    for reversed_or_mean in (fill[::-1], 0.5):
        assert occlusion.object_occlusion(
            model, dataset, "mask", reversed_or_mean)["accuracy"] == 0.0
    # Recorded as given, JSON-serialisable.
    assert result["fill_value"] == by_mask["fill_value"] == fill
    assert json.loads(json.dumps(result))["fill_value"] == fill


@pytest.mark.parametrize(
    "fill_value",
    [[0.1, 0.2], [0.1, 0.2, 0.3, 0.4], [], [[0.1, 0.2, 0.3]],
     [0.1, float("nan"), 0.3], [0.1, None, 0.3], float("inf"), "grey",
     True],
)
def test_bad_fill_values_are_rejected_naming_the_function(fill_value):
    images = np.zeros((2, 8, 8, 3), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(2, np.int32), np.ones((2, 8, 8), np.float32))
    ).batch(2)
    model = _channel_difference_model()
    expected = (
        "argument `fill_value` must be a finite number, or a sequence of "
        "finite numbers, one per image channel"
    )
    for caller, call in (
        ("occlude", lambda: occlusion.occlude(images, np.ones((2, 8, 8)),
                                              fill_value)),
        ("occlusion_robustness", lambda: occlusion.occlusion_robustness(
            model, dataset, fill_value=fill_value)),
        ("object_occlusion", lambda: occlusion.object_occlusion(
            model, dataset, fill_value=fill_value)),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"`{caller}`: {expected}"), message
        assert message.endswith(f"; received {fill_value!r}.")


def test_a_fill_value_of_another_length_names_the_channel_count():
    with pytest.raises(ValueError, match=r"one per image channel \(3\)"):
        occlusion.occlude(np.zeros((1, 2, 2, 3)), np.ones((1, 2, 2)),
                          [0.1, 0.2])
