import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.datasets import SUPPORTED_BACKBONES
from keras_ersm.datasets import get_preprocessing


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, size=(2, 5, 5, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "backbone, module",
    [
        ("ResNet50", keras.applications.resnet),
        ("resnet50v2", keras.applications.resnet_v2),
        ("MobileNetV2", keras.applications.mobilenet_v2),
        ("MobileNetV3Small", keras.applications.mobilenet_v3),
        ("EfficientNetV2B0", keras.applications.efficientnet_v2),
        ("ConvNeXtTiny", keras.applications.convnext),
        ("DenseNet121", keras.applications.densenet),
        ("VGG16", keras.applications.vgg16),
    ],
)
def test_matches_keras_applications(backbone, module, pixels):
    expected = module.preprocess_input(tf.constant(pixels))
    actual = get_preprocessing(backbone)(tf.constant(pixels))
    assert actual.dtype == tf.float32
    np.testing.assert_allclose(actual.numpy(), np.asarray(expected), rtol=1e-6)


def test_families_differ(pixels):
    # Guards against every name silently mapping to one function: caffe
    # (BGR, mean-centred), tf ([-1, 1]) and torch (standardised) styles.
    caffe = get_preprocessing("ResNet50")(pixels).numpy()
    tf_style = get_preprocessing("MobileNetV2")(pixels).numpy()
    torch = get_preprocessing("DenseNet121")(pixels).numpy()
    assert tf_style.min() >= -1.0 and tf_style.max() <= 1.0
    np.testing.assert_allclose(
        caffe[..., 0], pixels[..., 2] - 103.939, rtol=1e-5
    )
    assert abs(torch.mean()) < 1.5 and torch.min() < -1.0


def test_none_scales_to_unit_interval(pixels):
    out = get_preprocessing(None)(tf.constant(pixels))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), pixels / 255.0, rtol=1e-6)


def test_every_supported_backbone_resolves(pixels):
    for name in SUPPORTED_BACKBONES:
        out = get_preprocessing(name)(tf.constant(pixels))
        assert out.shape == pixels.shape


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="backbone='AlexNet'") as info:
        get_preprocessing("AlexNet")
    for name in ("ResNet50", "MobileNetV2", "EfficientNetV2B0", "DenseNet121"):
        assert name in str(info.value)
