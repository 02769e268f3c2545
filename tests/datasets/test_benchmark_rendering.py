import numpy as np
import pytest

from keras_ersm.datasets import rendering


@pytest.fixture(scope="module")
def photos():
    return rendering.load_background_photos(min_side=64)


@pytest.fixture(scope="module")
def digits():
    return rendering.load_digit_templates()


def test_digit_templates_are_sklearn_digits(digits):
    templates, labels = digits
    assert templates.shape == (1797, 8, 8)
    assert templates.dtype == np.float32
    assert templates.min() == 0.0 and templates.max() == 1.0
    np.testing.assert_array_equal(np.bincount(labels) >= 174, True)


def test_background_photos_are_rgb_and_downscaled(photos):
    assert len(photos) == len(rendering.BACKGROUND_NAMES) == 10
    for photo in photos:
        assert photo.dtype == np.uint8
        assert photo.ndim == 3 and photo.shape[2] == 3
        assert min(photo.shape[:2]) == 64
    # Ten distinct photographs: their mean colours all differ.
    means = np.stack([p.reshape(-1, 3).mean(0) for p in photos])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(10, dtype=bool)].min() > 1.0


def test_background_photos_rejects_bad_min_side():
    with pytest.raises(ValueError, match="`load_background_photos`: "
                       "argument `min_side` must be an integer >= 1; "
                       "received 0."):
        rendering.load_background_photos(min_side=0)


@pytest.mark.parametrize("correlation", [0.0, 0.5, 0.9, 1.0])
def test_assign_backgrounds_exact_rate(correlation):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=1001)
    ids = rendering.assign_backgrounds(labels, correlation, rng)
    assert ids.shape == labels.shape
    assert (ids == labels).sum() == round(correlation * 1001)
    assert ids.min() >= 0 and ids.max() <= 9


def test_assign_backgrounds_mismatches_are_uniform_over_other_ids():
    rng = np.random.default_rng(0)
    labels = np.zeros(9000, dtype=np.int64)
    ids = rendering.assign_backgrounds(labels, 0.0, rng)
    counts = np.bincount(ids, minlength=10)
    assert counts[0] == 0
    # 1000 expected per id; 5 standard deviations is about 150.
    np.testing.assert_allclose(counts[1:], 1000, atol=150)


def test_assign_backgrounds_validates_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"`assign_backgrounds`: argument "
                       r"`correlation` must be a number in \[0, 1\]; "
                       r"received 1.5."):
        rendering.assign_backgrounds(np.zeros(3, int), 1.5, rng)
    with pytest.raises(ValueError, match=r"`assign_backgrounds`: argument "
                       r"`labels` must be integers in \[0, 10\); received "
                       r"labels in \[0, 10\]\."):
        rendering.assign_backgrounds(np.array([0, 10]), 0.5, rng)


def test_render_example_object_mask_is_pixel_exact(digits, photos):
    templates, _ = digits
    for i in range(20):
        image, object_mask = rendering.render_example(
            templates[i],
            photos[i % 10],
            32,
            np.random.default_rng([i, 0]),
            np.random.default_rng([i, 1]),
        )
        # Rendering an empty template with the same background generator
        # gives the bare background crop.
        background, empty = rendering.render_example(
            np.zeros((8, 8)),
            photos[i % 10],
            32,
            np.random.default_rng([i, 0]),
            np.random.default_rng([i, 1]),
        )
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert object_mask.shape == (32, 32) and object_mask.dtype == bool
        assert not empty.any()
        np.testing.assert_array_equal(image[~object_mask],
                                      background[~object_mask])
        # The object is one flat colour...
        assert len(np.unique(image[object_mask], axis=0)) == 1
        # ...that contrasts with the background it covers.
        colour = image[object_mask][0] / 255.0
        under = background[object_mask].mean(axis=0) / 255.0
        assert np.linalg.norm(colour - under) > 0.2
        # Its bounding box is 35-60% of the image side (digits may not
        # touch every edge of their box).
        rows, cols = np.nonzero(object_mask)
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        assert 4 <= extent <= round(0.6 * 32)
        assert 0.02 < object_mask.mean() < 0.36


def test_render_example_is_deterministic_and_seed_dependent(digits, photos):
    templates, _ = digits

    def render(seed):
        return rendering.render_example(
            templates[7],
            photos[2],
            32,
            np.random.default_rng([seed, 0]),
            np.random.default_rng([seed, 1]),
        )

    first, second, other = render(5), render(5), render(6)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_render_example_rejects_small_photo(digits):
    templates, _ = digits
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"`render_example`: argument "
                       r"`photo` must be an image whose sides are >= "
                       r"image_size=32; received a photo of shape "
                       r"\(16, 40, 3\)\."):
        rendering.render_example(
            templates[0], np.zeros((16, 40, 3), np.uint8), 32, rng, rng
        )


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    real_import = rendering.importlib.import_module

    def import_module(name):
        if name.startswith("sklearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name)

    monkeypatch.setattr(rendering.importlib, "import_module", import_module)
    expected = r"load_digit_templates.*sklearn.*keras-ersm\[demo\]"
    with pytest.raises(ImportError, match=expected):
        rendering.load_digit_templates()
