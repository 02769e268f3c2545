"""The feature layers the benchmark cuts Keras Applications at."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm import backbones


def receptive_field(model):
    """Side, in pixels, of the square of the image that reaches the token
    at the centre of `model`'s output (the support of its gradient)."""
    images = tf.random.uniform((1, 128, 128, 3))
    with tf.GradientTape() as tape:
        tape.watch(images)
        features = model(images, training=False)
        _, height, width, channels = features.shape
        token = features[0, height // 2, width // 2]
        total = tf.reduce_sum(token * tf.random.normal((channels,)))
    reach = np.any(np.asarray(tape.gradient(total, images))[0] != 0, axis=-1)
    rows, columns = np.nonzero(reach)
    return rows.max() - rows.min() + 1, columns.max() - columns.min() + 1


# The receptive fields and grids that `LOCAL_FEATURE_LAYERS` documents.
@pytest.mark.parametrize("backbone, side, grid", [
    ("BenchmarkConvNet", 39, (8, 8)),
    ("MobileNetV2", 43, (8, 8)),
    ("ResNet50", 35, (16, 16)),
])
def test_local_feature_layers_see_about_a_digit(backbone, side, grid):
    layer = backbones.LOCAL_FEATURE_LAYERS[backbone]
    model = backbones.cut(
        backbones.create(backbone, (128, 128, 3), weights=None), layer)
    assert receptive_field(model) == (side, side)
    # On the benchmark's 64x64 images, digits of 22-38 px.
    assert backbones.feature_grid(backbone, 64, layer) == grid
