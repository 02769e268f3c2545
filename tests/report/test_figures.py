"""What `masks_figure` draws: overlay extents and displayed colours."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_ersm.preprocessing import get_preprocessing  # noqa: E402
from keras_ersm.report import figures  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The figure `masks_figure` saves, kept open for inspection."""
    saved = []
    monkeypatch.setattr(
        figures, "_save", lambda figure, path: saved.append(figure)
    )
    yield saved
    for figure in saved:
        plt.close(figure)


def examples(images, grid=(3, 4)):
    count, height, width = images.shape[:3]
    rng = np.random.default_rng(0)
    return {
        "images": images,
        "labels": np.arange(count),
        "object_masks": np.ones((count, height, width, 1), np.float32),
        "ersm_mask": rng.uniform(size=(count, *grid)).astype(np.float32),
        "gradcam": rng.uniform(size=(count, *grid)).astype(np.float32),
    }


def test_overlays_cover_a_non_square_image_the_grid_does_not_divide(
    tmp_path, drawn
):
    # 3 x 4 tokens divide neither 20 rows nor 30 columns.
    images = np.random.default_rng(1).uniform(size=(2, 20, 30, 3))
    figures.masks_figure(examples(images.astype(np.float32)),
                         tmp_path / "masks.png")
    (figure,) = drawn
    expected = (0, 30, 20, 0)
    for axis in figure.axes:
        for drawn_image in axis.images:
            assert drawn_image.get_extent() == pytest.approx(expected)
    # Image + overlay in each mask column, the token grid drawn as is.
    _, object_mask, ersm, gradcam = figure.axes[:4]
    assert object_mask.images[1].get_array().shape == (20, 30)
    for axis in (ersm, gradcam):
        assert len(axis.images) == 2
        assert axis.images[1].get_array().shape == (3, 4)


def test_one_token_grid_covers_the_image(tmp_path, drawn):
    images = np.zeros((1, 8, 12, 3), np.float32)
    figures.masks_figure(examples(images, grid=(1, 1)),
                         tmp_path / "masks.png")
    overlay = drawn[0].axes[-1].images[1]
    assert overlay.get_array().shape == (1, 1)
    assert overlay.get_extent() == pytest.approx((0, 12, 8, 0))


# Caffe (BGR, mean-subtracted), tf ([-1, 1]), torch and pass-through.
@pytest.mark.parametrize(
    "backbone", ["ResNet50", "MobileNetV2", "DenseNet121", "EfficientNetV2B0"]
)
def test_displayed_image_is_the_original_rgb(tmp_path, drawn, backbone):
    # Distinct channels, so a BGR display or a per-image stretch differs.
    rgb = np.random.default_rng(2).uniform(size=(2, 6, 10, 3))
    rgb *= np.array([1.0, 0.5, 0.2])
    rgb = rgb.astype(np.float32)
    inputs = np.asarray(get_preprocessing(backbone)(rgb * 255))
    figures.masks_figure(
        examples(inputs), tmp_path / "masks.png", backbone=backbone
    )
    image_column = drawn[0].axes[::4]
    for row, axis in enumerate(image_column):
        np.testing.assert_allclose(
            axis.images[0].get_array(), rgb[row], atol=1e-4
        )
