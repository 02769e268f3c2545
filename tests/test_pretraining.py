"""The benchmark backbone, its pre-training and its cache."""

import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm import backbones
from keras_ersm import pretraining
from keras_ersm.datasets import load_benchmark


def test_benchmark_convnet_grid_and_receptive_field():
    backbone = backbones.create("benchmarkconvnet", (64, 64, 3), weights=None)
    assert tuple(backbone.output.shape) == (None, 8, 8, 128)
    # The pixels that reach one interior token: a 39 x 39 square.
    images = tf.random.uniform((1, 64, 64, 3))
    with tf.GradientTape() as tape:
        tape.watch(images)
        token = backbone(images, training=False)[0, 4, 4]
        total = tf.reduce_sum(token * tf.random.normal(token.shape))
    reach = np.any(np.asarray(tape.gradient(total, images))[0] != 0, axis=-1)
    rows, columns = np.nonzero(reach)
    assert rows.max() - rows.min() + 1 == 39
    assert columns.max() - columns.min() + 1 == 39


def test_benchmark_convnet_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="no ImageNet weights"):
        backbones.create("BenchmarkConvNet", (64, 64, 3))


def test_pretraining_targets_are_digit_and_background():
    images, (labels, background) = next(iter(load_benchmark(
        "pretrain", 256, 32, with_background=True, shuffle=False)))
    assert images.shape == (256, 32, 32, 3)
    assert float(tf.reduce_max(images)) <= 1.0
    # Backgrounds independent of the label: about 10% match.
    assert float(tf.reduce_mean(tf.cast(labels == background, tf.float32))) < 0.2
    with pytest.raises(ValueError, match="False when `with_object_masks`"):
        load_benchmark("test", 8, 32, with_object_masks=True,
                       with_background=True)


def test_pretrained_backbone_is_cached(tmp_path):
    settings = dict(image_size=32, epochs=1, num_examples=128,
                    directory=str(tmp_path), verbose=0)
    first, info = pretraining.pretrained_benchmark_backbone(**settings)
    assert not info["cached"]
    assert set(info["train_accuracy"]) == {"digit", "background"}
    again, info_again = pretraining.pretrained_benchmark_backbone(**settings)
    assert info_again["cached"] and info_again["path"] == info["path"]
    for a, b in zip(first.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Another recipe is another file, trained anew.
    _, other = pretraining.pretrained_benchmark_backbone(**settings, seed=1)
    assert not other["cached"] and other["path"] != info["path"]


def test_the_benchmark_convnet_cache_keeps_its_name(tmp_path):
    # Weights cached before cut backbones existed are still found: the
    # settings of an uncut backbone hash as they did.
    settings = dict(recipe=pretraining.RECIPE_VERSION, image_size=64,
                    epochs=16, batch_size=64, learning_rate=2e-3, seed=0,
                    num_examples=None)
    key = hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = pretraining._weights_path("BenchmarkConvNet", settings,
                                     str(tmp_path))
    assert os.path.basename(path) == f"benchmarkconvnet_{key}.weights.h5"


def test_an_application_is_pretrained_up_to_its_feature_layer(tmp_path):
    layer = backbones.LOCAL_FEATURE_LAYERS["MobileNetV2"]
    settings = dict(image_size=32, backbone="mobilenetv2",
                    feature_layer=layer, epochs=1, num_examples=64,
                    directory=str(tmp_path), verbose=0)
    model, info = pretraining.pretrained_benchmark_backbone(**settings)
    assert model.layers[-1].name == layer
    assert tuple(model.output.shape) == (None, 4, 4, 192)
    assert info["backbone"] == "MobileNetV2" and not info["cached"]
    assert os.path.basename(info["path"]).startswith("mobilenetv2_")
    again, info_again = pretraining.pretrained_benchmark_backbone(**settings)
    assert info_again["cached"] and info_again["path"] == info["path"]
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
