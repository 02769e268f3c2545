import keras
import numpy as np
import pytest
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


def _softmax_variant(model, final):
    """`model` with a softmax after its logits: on the Dense layer itself
    ("dense") or as a layer of its own ("layer")."""
    logits_layer = model.get_layer("logits")
    if final == "dense":
        dense = keras.layers.Dense(2, activation="softmax", name="probs")
        outputs = dense(logits_layer.input)
        dense.set_weights(logits_layer.get_weights())
    else:
        outputs = keras.layers.Softmax(name="probs")(model.output)
    return keras.Model(model.input, outputs)


@pytest.mark.parametrize("final", ["dense", "layer"])
def test_gradcam_differentiates_the_logits_before_a_softmax(final):
    # Grad-CAM's class score is the logit: a model that ends in a softmax
    # gets the same maps as its logits. The probability's gradient would
    # differ: dp0/dA = p0 p1 (dz0/dA - dz1/dA), scaled by p0 p1 <= 1/4 and
    # carrying the other class (here logit1 = 2 shrinks it further).
    region = np.zeros((8, 8), np.float32)
    region[2:6, 3:7] = 1.0
    model = region_baseline_model(region, size=8, other_logit=2.0)
    images = np.random.default_rng(1).uniform(0.1, 1.0, (3, 8, 8, 1))
    images = images.astype(np.float32)
    classes = tf.zeros(3, tf.int32)
    expected = gradcam.gradcam_grid(model, images, classes=classes)
    np.testing.assert_allclose(expected, images[..., 0] * region / 64.0,
                               rtol=1e-5, atol=1e-7)
    softmax_model = _softmax_variant(model, final)
    cams = gradcam.gradcam_grid(softmax_model, images, classes=classes)
    np.testing.assert_allclose(cams, expected, rtol=1e-5, atol=1e-7)
    # The control: the probability's Grad-CAM is a different map.
    features, head = gradcam.splitting.split_at_layer(softmax_model)
    with tf.GradientTape() as tape:
        maps = features(images)
        tape.watch(maps)
        probability = head(maps)[:, 0]
    weights = tf.reduce_mean(tape.gradient(probability, maps), axis=(1, 2))
    probability_cams = tf.nn.relu(
        tf.einsum("bhwc,bc->bhw", maps, weights)
    )
    assert np.max(np.abs(probability_cams - expected)) > 0.5 * np.max(expected)


def test_class_logits_keeps_a_head_without_softmax():
    model = region_baseline_model()
    _, head = gradcam.splitting.split_at_layer(model)
    assert gradcam.class_logits(head) is head


def test_gradcam_names_the_backend_it_needs(monkeypatch):
    model = region_baseline_model()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="TensorFlow backend.*'jax'"):
        gradcam.gradcam_grid(model, np.ones((1, 4, 4, 1), np.float32))
