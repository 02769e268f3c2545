"""Invariants of the evaluation functions on small random conv models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ersm import EnergyMask
from keras_ersm.evaluation import accuracy
from keras_ersm.evaluation import deletion
from keras_ersm.evaluation import localization
from keras_ersm.evaluation import maps
from keras_ersm.evaluation import sparsity


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                            activation="relu")(inputs)
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                                   name="last_conv")(x)
    masked = EnergyMask.from_preset(
        "authors", patch_size=2, formulation="coherent",
        score_kernel_initializer="glorot_uniform",
        score_bias_initializer="zeros", name="mask")(features)
    head = keras.layers.GlobalAveragePooling2D()(masked)
    ersm = keras.Model(inputs, keras.layers.Dense(3)(head))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    baseline = keras.Model(inputs, keras.layers.Dense(3)(pooled))
    return ersm, baseline


@pytest.fixture(scope="module")
def data():
    # One batch shape, so the XLA-compiled mask kernel compiles once.
    rng = np.random.default_rng(0)
    images = rng.random((4, 16, 16, 3), np.float32)
    labels = rng.integers(0, 3, 4).astype(np.int32)
    masks = np.zeros((4, 16, 16, 1), np.float32)
    masks[:, 4:12, 4:12] = 1.0
    return tf.data.Dataset.from_tensor_slices((images, labels, masks)).batch(4)


def test_deletion_curves_start_at_clean_accuracy_and_meet_at_the_end(
    models, data
):
    ersm, baseline = models
    clean = accuracy.top1_accuracy(ersm, data)["accuracy"]
    for most_important_first in (False, True):
        result = deletion.deletion_curves(
            ersm, data, orders=deletion.DELETION_ORDERS, baseline=baseline,
            most_important_first=most_important_first, steps=4,
        )
        assert result["num_tokens"] == 16  # 8 x 8 map, patch 2
        curves = result["curves"]
        assert set(curves) == set(deletion.DELETION_ORDERS)
        for curve in curves.values():
            assert curve["num_deleted"] == [0, 4, 8, 12, 16]
            assert curve["accuracy"][0] == pytest.approx(clean)
            assert curve["accuracy"][-1] == curves["random"]["accuracy"][-1]
            assert 0.0 <= curve["area"] <= 1.0


def test_maps_and_sparsity_run_on_a_coherent_model(models, data):
    ersm, baseline = models
    for map_fn, normalize in (
        (maps.ersm_maps(ersm), False),
        (maps.gradcam_maps(baseline, target="label"), True),
        (maps.magnitude_maps(ersm), True),
    ):
        result = localization.localization_scores(map_fn, data,
                                                  normalize=normalize)
        assert 0.0 <= result["iou_mean"] <= 1.0
        assert result["num_images"] == 4
    stats = sparsity.sparsity_statistics(ersm, data)
    assert stats["num_tokens"] == 16 and stats["num_images"] == 4
    assert sum(stats["histogram"]["counts"]) == 4 * 16
