import numpy as np
import tensorflow as tf

from keras_ersm.evaluation import gradcam

from ersm_test_models import region_baseline_model


def test_gradcam_is_the_hand_computed_map_on_the_region():
    # logit0 = mean_R(x) - mean(x off R): Grad-CAM of class 0 is
    # relu((x R - x (1 - R)) / 64) = x R / 64, zero off R.
    region = np.zeros((8, 8), np.float32)
    region[2:6, 3:7] = 1.0
    model = region_baseline_model(region, size=8)
    images = np.random.default_rng(0).uniform(0.1, 1.0, (3, 8, 8, 1))
    images = images.astype(np.float32)
    cams = gradcam.gradcam_grid(model, images, classes=tf.zeros(3, tf.int32))
    np.testing.assert_allclose(cams, images[..., 0] * region / 64.0,
                               rtol=1e-5, atol=1e-7)
    peaks = np.argmax(cams.numpy().reshape(3, -1), axis=1)
    assert np.all(region.reshape(-1)[peaks] == 1.0)


def test_gradcam_of_a_constant_class_is_zero_and_image_size():
    model = region_baseline_model(other_logit=10.0)  # predicts class 1
    images = np.ones((2, 4, 4, 1), np.float32)
    cams = gradcam.gradcam_grid(model, images)  # class 1: constant, no gradient
    np.testing.assert_array_equal(cams, np.zeros((2, 4, 4)))
    assert gradcam.gradcam_image(model, images).shape == (2, 4, 4)
