import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_ersm.datasets  # noqa: F401  (registers the builder)
from keras_ersm.datasets import BENCHMARK_NAME
from keras_ersm.datasets import ErsmBenchmarkConfig

SPLITS = ("train", "test", "test_shuffled", "pretrain", "validation")


def _as_arrays(builder):
    return {
        split: tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        for split in SPLITS
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    # The entry point: tfds.load by name after importing the package.
    return {
        split: tfds.as_numpy(
            tfds.load(
                f"{BENCHMARK_NAME}/32",
                split=split,
                data_dir=data_dir,
                batch_size=-1,
            )
        )
        for split in SPLITS
    }


def _build(data_dir, **kwargs):
    config = ErsmBenchmarkConfig(
        name="tiny", image_size=16, num_train=60, num_test=30,
        num_pretrain=40, num_validation=20, **kwargs
    )
    builder = tfds.builder(BENCHMARK_NAME, config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return _as_arrays(builder)


def test_split_sizes_and_features(small):
    assert {s: len(small[s]["label"]) for s in SPLITS} == {
        "train": 2000,
        "test": 500,
        "test_shuffled": 500,
        "pretrain": 2000,
        "validation": 500,
    }
    for arrays in small.values():
        assert arrays["image"].shape[1:] == (32, 32, 3)
        assert arrays["image"].dtype == np.uint8
        assert arrays["object_mask"].shape[1:] == (32, 32, 1)
        assert set(np.unique(arrays["object_mask"])) == {0, 1}
        assert set(np.unique(arrays["label"])) == set(range(10))
        assert set(np.unique(arrays["background"])) == set(range(10))


def test_correlation_rates(small):
    def rate(split):
        return np.mean(small[split]["background"] == small[split]["label"])

    assert abs(rate("train") - 0.9) <= 0.02
    assert abs(rate("test") - 0.9) <= 0.02
    assert abs(rate("validation") - 0.9) <= 0.02
    # Chance is 10%; with 500 examples the standard deviation is 1.3%.
    assert abs(rate("test_shuffled") - 0.1) <= 0.04
    # 2000 examples: 0.7%.
    assert abs(rate("pretrain") - 0.1) <= 0.025


@pytest.mark.parametrize("split", ["pretrain", "validation"])
def test_pretrain_and_validation_are_disjoint_from_the_other_splits(small,
                                                                   split):
    # No image of the split appears in another split.
    def keys(split):
        return {image.tobytes() for image in small[split]["image"]}

    own = keys(split)
    for other in SPLITS:
        if other != split:
            assert not own & keys(other), other


def test_masks_cover_exactly_the_object(small):
    for arrays in small.values():
        masks = arrays["object_mask"][:200, ..., 0].astype(bool)
        for image, mask in zip(arrays["image"][:200], masks):
            assert mask.any()
            # The object is painted in one flat colour...
            colour = np.unique(image[mask], axis=0)
            assert len(colour) == 1
            # ...that the background (a photo crop) hardly ever shows.
            same = np.all(image[~mask] == colour[0], axis=-1)
            assert same.mean() < 0.05


def test_test_shuffled_shows_test_objects_on_other_backgrounds(small):
    test = small["test"]
    shuffled = small["test_shuffled"]
    test_order = np.argsort(test["index"])
    shuffled_order = np.argsort(shuffled["index"])
    np.testing.assert_array_equal(
        test["index"][test_order], shuffled["index"][shuffled_order]
    )
    np.testing.assert_array_equal(
        test["label"][test_order], shuffled["label"][shuffled_order]
    )
    test_masks = test["object_mask"][test_order]
    shuffled_masks = shuffled["object_mask"][shuffled_order]
    np.testing.assert_array_equal(test_masks, shuffled_masks)
    different = test["background"][test_order] != shuffled["background"][
        shuffled_order
    ]
    assert different.mean() > 0.8


def test_build_is_deterministic_under_seed(tmp_path):
    first = _build(str(tmp_path / "a"), seed=7)
    second = _build(str(tmp_path / "b"), seed=7)
    other = _build(str(tmp_path / "c"), seed=8)
    for split in SPLITS:
        for key in ("image", "label", "object_mask", "background", "index"):
            np.testing.assert_array_equal(first[split][key], second[split][key])
    assert not np.array_equal(first["train"]["image"], other["train"]["image"])


def test_correlation_is_configurable(tmp_path):
    arrays = _build(str(tmp_path), correlation=0.5)
    train = arrays["train"]
    assert np.sum(train["background"] == train["label"]) == 30


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 4}, "`image_size` must be an integer >= 8; "
                            "received 4."),
        ({"num_train": 0}, "`num_train` must be an integer >= 1; "
                           "received 0."),
        ({"num_pretrain": 0}, "`num_pretrain` must be an integer >= 1; "
                              "received 0."),
        ({"num_validation": 0}, "`num_validation` must be an integer >= 1; "
                                "received 0."),
        ({"correlation": -0.1}, r"`correlation` must be a number in "
                                r"\[0, 1\]; received -0.1."),
    ],
)
def test_config_validates_arguments(kwargs, match):
    with pytest.raises(ValueError,
                       match="ErsmBenchmarkConfig: argument " + match):
        ErsmBenchmarkConfig(name="bad", **kwargs)


def test_the_validation_split_leaves_the_other_splits_unchanged(tmp_path):
    # Its examples are drawn from their own seeds: its size changes nothing
    # else, so adding it (version 1.3.0) left the earlier splits as they were.
    first = _build(str(tmp_path / "a"))
    config = ErsmBenchmarkConfig(
        name="tiny", image_size=16, num_train=60, num_test=30,
        num_pretrain=40, num_validation=35,
    )
    builder = tfds.builder(BENCHMARK_NAME, config=config,
                           data_dir=str(tmp_path / "b"))
    builder.download_and_prepare()
    second = _as_arrays(builder)
    for split in ("train", "test", "test_shuffled", "pretrain"):
        for key in ("image", "label", "object_mask", "background", "index"):
            np.testing.assert_array_equal(first[split][key], second[split][key])
    assert len(second["validation"]["label"]) == 35
