import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ersm import EnergyMask
from keras_ersm.evaluation import sparsity


def two_channel_model(a=5.0):
    # Token [1, 0] scores z = a (keep sigmoid(-a)); token [0, 1] z = -a.
    inputs = keras.Input((4, 4, 2))
    features = keras.layers.Conv2D(2, 1, use_bias=False, name="features")(
        inputs
    )
    masked = EnergyMask.from_preset(
        "authors", energy_loss_weight=0.0, track_kept_fraction=False,
        name="mask")(features)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(
        masked
    ))
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([np.eye(2)[None, None]])
    model.get_layer("mask").set_weights(
        [np.array([[[a, -a]]], np.float32), np.float32(0.0)]
    )
    return model


def images_keeping(counts):
    images = np.zeros((len(counts), 16, 2), np.float32)
    for image, count in zip(images, counts):
        image[:count, 1] = 1.0
        image[count:, 0] = 1.0
    return images.reshape(-1, 4, 4, 2)


def test_binary_entropy():
    np.testing.assert_allclose(sparsity.binary_entropy([0.0, 0.5, 1.0]),
                               [0.0, 1.0, 0.0])


def test_sparsity_statistics_by_hand():
    images = images_keeping([4, 12, 8])
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(3, np.int32))
    ).batch(2)
    stats = sparsity.sparsity_statistics(two_channel_model(), dataset)
    kept = stats["kept_fraction"]
    assert stats["kept_fraction_per_image"] == [0.25, 0.75, 0.5]
    assert kept["mean"] == pytest.approx(0.5)
    assert kept["std"] == pytest.approx(np.sqrt(0.125 / 3))
    assert (kept["min"], kept["max"]) == (0.25, 0.75)
    assert kept["percentiles"]["50"] == pytest.approx(0.5)
    # Every value is sigmoid(5) or sigmoid(-5): the same entropy, and the
    # two values sum to 1.
    high = 1.0 / (1.0 + np.exp(-5.0))
    assert stats["entropy_bits"] == pytest.approx(
        float(sparsity.binary_entropy(high)), rel=1e-4
    )
    assert stats["mean_value"] == pytest.approx(0.5, abs=1e-6)
    counts = stats["histogram"]["counts"]
    assert counts[0] == 24 and counts[-1] == 24 and sum(counts) == 48
    assert len(stats["histogram"]["edges"]) == 21
    assert stats["num_images"] == 3 and stats["num_tokens"] == 16
    with pytest.raises(ValueError, match="`sparsity_statistics`: argument "
                       "`bins` must be an integer >= 1; received 0."):
        sparsity.sparsity_statistics(two_channel_model(), dataset, bins=0)
    for threshold in (float("nan"), 1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match=r"`sparsity_statistics`: "
                           r"argument `threshold` must be a number in "
                           rf"\[0, 1\); received {re.escape(repr(threshold))}"
                           r"\."):
            sparsity.sparsity_statistics(two_channel_model(), dataset,
                                         threshold=threshold)
    numpy_bins = sparsity.sparsity_statistics(two_channel_model(), dataset,
                                              bins=np.int64(20))
    assert numpy_bins["histogram"] == stats["histogram"]
