import numpy as np
import pytest

from keras_ersm.evaluation.curves import curve_area


def test_known_areas():
    x = np.linspace(0.0, 1.0, 11)
    assert curve_area(x, x) == pytest.approx(0.5)
    assert curve_area(x, 1.0 - x) == pytest.approx(0.5)
    assert curve_area(x, np.ones_like(x)) == pytest.approx(1.0)
    assert curve_area([0.0, 0.25, 1.0], [1.0, 1.0, 0.0]) == pytest.approx(
        0.25 + 0.375
    )


def test_invalid_grids_raise():
    with pytest.raises(ValueError, match=r"`curve_area`: argument `values` "
                       r"must be 1-D, of the length \(>= 2\) of `fractions`; "
                       r"received shapes \(2,\) \(fractions\) and \(1,\) "
                       r"\(values\)\."):
        curve_area([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match=r"`curve_area`: argument "
                       r"`fractions` must be increasing strictly from 0 to "
                       r"1; received \[0\.0, 0\.5\]\."):
        curve_area([0.0, 0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"`curve_area`: argument "
                       r"`fractions` must be increasing strictly from 0 to "
                       r"1; received \[0\.0, 0\.6, 0\.5, 1\.0\]\."):
        curve_area([0.0, 0.6, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0])
