"""Where kept tokens fall: object shares, effective kept fraction, Spearman."""

import numpy as np
import pytest

from keras_ersm.evaluation import object_token_fractions
from keras_ersm.evaluation import object_tokens
from keras_ersm.evaluation import spearman
from keras_ersm.evaluation import token_mask_statistics


def test_object_token_fractions_average_each_cell():
    object_masks = np.zeros((1, 4, 6, 1))
    object_masks[0, 0, 0] = 1  # one pixel of the top-left 2x2 token
    object_masks[0, 2:, 4:] = 1  # all of the bottom-right token
    fractions = object_token_fractions(object_masks, (2, 3))
    np.testing.assert_allclose(fractions[0], [[0.25, 0, 0], [0, 0, 1.0]])
    with pytest.raises(ValueError, match=r"`object_token_fractions`: "
                       r"argument `grid_shape` must be a token grid \(rows, "
                       r"columns\) that divides the object masks' height and "
                       r"width \(4 x 6\); received \(3, 3\)\."):
        object_token_fractions(object_masks, (3, 3))


def test_spearman_against_hand_computed_ranks():
    # Ranks 1..5 vs 5..1: -1; ties take mean ranks.
    assert spearman([1, 2, 3, 4, 5], [9, 7, 5, 3, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    # Ranks (1, 2.5, 2.5, 4) and (2, 1, 4, 3): Pearson of the ranks.
    expected = np.corrcoef([1, 2.5, 2.5, 4], [2, 1, 4, 3])[0, 1]
    assert spearman([0, 5, 5, 9], [2, 1, 4, 3]) == pytest.approx(expected)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_token_mask_statistics_by_hand():
    # Two images of 4 tokens; the object covers tokens 0 and 1 of each.
    fractions = np.array([[[0.5, 0.2], [0.0, 0.05]]] * 2)
    token_masks = np.array([
        [[1.0, 0.0], [1.0, 0.0]],  # keeps token 0 (object), 2 (not)
        [[0.0, 0.0], [0.0, 0.2]],  # keeps nothing (0.2 <= 0.5)
    ])
    stats = token_mask_statistics(token_masks, fractions,
                                  np.array([0.1, 0.3]))
    assert stats["kept_fraction"]["mean"] == pytest.approx(0.25)
    assert stats["kept_fraction"]["relative_std"] == pytest.approx(1.0)
    assert stats["empty_images"] == 0.5
    # (sum m)^2 / (N sum m^2): image 1: 4 / (4 * 2) = 0.5; image 2: a
    # single non-zero token: 0.04 / (4 * 0.04) = 0.25.
    assert stats["effective_kept_fraction"] == pytest.approx(0.375)
    assert stats["kept_on_object"] == pytest.approx(0.5)
    assert stats["object_tokens_kept"] == pytest.approx(0.25)
    assert stats["object_token_base_rate"] == pytest.approx(0.5)
    assert stats["spearman_kept_vs_area"] == pytest.approx(-1.0)


def test_object_tokens_are_those_with_enough_object_pixels():
    object_masks = np.zeros((1, 4, 6))
    object_masks[0, 0, 0] = 1  # a quarter of the top-left token
    object_masks[0, 2:, 4:] = 1
    tokens = object_tokens(object_masks, (2, 3))
    np.testing.assert_array_equal(tokens[0], [[1, 0, 0], [0, 0, 1]])
    # The threshold is inclusive: a quarter is on the object at 0.25.
    assert object_tokens(object_masks, (2, 3), on_object=0.25)[0, 0, 0]
    assert not object_tokens(object_masks, (2, 3), on_object=0.3)[0, 0, 0]
    assert not object_tokens(np.zeros((1, 4, 6)), (2, 3)).any()
