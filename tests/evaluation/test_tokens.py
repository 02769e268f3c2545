import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import tokens


def test_token_norms_by_hand():
    features = np.arange(32, dtype=np.float32).reshape(1, 4, 4, 2)
    norms = tokens.token_norms(features, patch_size=2).numpy()
    patch = features[0, :2, 2:, :]
    assert norms.shape == (1, 2, 2)
    assert norms[0, 0, 1] == pytest.approx(np.linalg.norm(patch))
    with pytest.raises(ValueError, match=r"`token_norms`: argument "
                       r"`patch_size` must be an integer that divides the "
                       r"height and width of the feature map \(4 x 4\); "
                       r"received 3\."):
        tokens.token_norms(features, patch_size=3)
    np.testing.assert_array_equal(
        tokens.token_norms(features, patch_size=np.int64(2)), norms)
    with pytest.raises(ValueError, match="`token_norms`: argument "
                       "`patch_size` must be an integer >= 1; received 2.0."):
        tokens.token_norms(features, patch_size=2.0)


def test_expand_resize_and_normalize():
    grid = tf.constant([[[1.0, 2.0]]])
    expanded = tokens.expand_token_grid(grid, 2).numpy()
    np.testing.assert_array_equal(expanded[0, :, :, 0],
                                  [[1, 1, 2, 2], [1, 1, 2, 2]])
    pooled = tokens.resize_maps(tf.constant([[[1.0, 3.0], [5.0, 7.0]]]),
                                (1, 1), method="area")
    np.testing.assert_allclose(pooled, [[[4.0]]])
    normalized = tokens.normalize_maps(tf.constant([[[1.0, 3.0]], [[2.0,
                                                                     2.0]]]))
    np.testing.assert_allclose(normalized, [[[0.0, 1.0]], [[0.0, 0.0]]])
    with pytest.raises(ValueError, match=r"`resize_maps`: argument `method` "
                       r"must be one of \('bilinear', 'nearest', 'area'\); "
                       r"received 'cubic'\."):
        tokens.resize_maps(grid, (2, 2), method="cubic")
