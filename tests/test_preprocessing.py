import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.datasets import SUPPORTED_BACKBONES
from keras_ersm.datasets import get_preprocessing


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, size=(2, 5, 5, 3)).astype(np.float32)


def caffe_style(pixels):
    """RGB to BGR, then the ImageNet channel means subtracted."""
    return pixels[..., ::-1] - np.array([103.939, 116.779, 123.68])


def tf_style(pixels):
    """Scaled to [-1, 1]."""
    return pixels / 127.5 - 1.0


def torch_style(pixels):
    """Scaled to [0, 1], then standardised with ImageNet's statistics."""
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    return (pixels / 255.0 - mean) / std


def unchanged(pixels):
    """Backbones whose models rescale their inputs themselves."""
    return pixels


# Each family's formula, written out by hand from the Keras Applications
# documentation, so that a wrong mapping (or a changed Keras) fails here.
@pytest.mark.parametrize(
    "backbone, expected_preprocessing",
    [
        ("ResNet50", caffe_style),
        ("VGG16", caffe_style),
        ("resnet50v2", tf_style),
        ("MobileNetV2", tf_style),
        ("Xception", tf_style),
        ("DenseNet121", torch_style),
        ("MobileNetV3Small", unchanged),
        ("EfficientNetV2B0", unchanged),
        ("ConvNeXtTiny", unchanged),
    ],
)
def test_matches_each_familys_formula(backbone, expected_preprocessing,
                                      pixels):
    actual = get_preprocessing(backbone)(tf.constant(pixels))
    assert actual.dtype == tf.float32
    np.testing.assert_allclose(
        actual.numpy(), expected_preprocessing(pixels.astype(np.float64)),
        rtol=1e-5, atol=1e-4,
    )


def test_none_scales_to_unit_interval(pixels):
    out = get_preprocessing(None)(tf.constant(pixels))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), pixels / 255.0, rtol=1e-6)


def test_every_supported_backbone_resolves(pixels):
    for name in SUPPORTED_BACKBONES:
        out = get_preprocessing(name)(tf.constant(pixels))
        assert out.shape == pixels.shape


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="`get_preprocessing`: argument "
                       "`backbone` must be None or one of .*; received "
                       "'AlexNet'.") as info:
        get_preprocessing("AlexNet")
    for name in ("ResNet50", "MobileNetV2", "EfficientNetV2B0", "DenseNet121"):
        assert name in str(info.value)
