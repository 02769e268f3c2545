import pytest

from keras_ersm import validation


def test_invalid_reads_owner_argument_expected_and_value():
    error = validation.invalid("`f`", "x", "an integer >= 1", 0)
    assert str(error) == ("`f`: argument `x` must be an integer >= 1; "
                          "received 0.")
    error = validation.invalid("`f`", "maps", "(batch, h, w)",
                               received="maps of shape (2, 3)",
                               hint="Squeeze them first.")
    assert str(error) == ("`f`: argument `maps` must be (batch, h, w); "
                          "received maps of shape (2, 3). Squeeze them "
                          "first.")


def test_check_divides():
    assert validation.check_divides("`f`", 2, 4, 6, "the map") == 2
    # An unknown side (a symbolic shape) is not checked.
    assert validation.check_divides("L", 3, None, 6, "the input") == 3
    with pytest.raises(ValueError) as info:
        validation.check_divides("L", 4, None, 6, "the input")
    assert str(info.value) == (
        "L: argument `patch_size` must be an integer that divides the "
        "height and width of the input (None x 6); received 4."
    )
    with pytest.raises(ValueError, match="`f`: argument `patch_size` must "
                       "be an integer >= 1; received 0."):
        validation.check_divides("`f`", 0, 4, 4, "the map")


def test_check_number_without_a_range():
    assert validation.check_number("`f`", "t", 3, "a finite number") == 3.0
    with pytest.raises(ValueError, match="`f`: argument `t` must be a "
                       "finite number; received inf."):
        validation.check_number("`f`", "t", float("inf"), "a finite number")
