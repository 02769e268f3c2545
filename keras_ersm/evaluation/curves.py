"""Areas under curves sampled on [0, 1]."""

import numpy as np

from keras_ersm import validation


def curve_area(fractions, values):
    """Trapezoidal area under a curve over `x` in `[0, 1]`.

    Args:
        fractions: increasing x values, starting at 0 and ending at 1 (e.g.
            the fraction of tokens deleted).
        values: y values of the same length (e.g. accuracies in `[0, 1]`).

    Returns:
        float, the area; in `[0, 1]` when the values are.

    Example:

    >>> curve_area([0.0, 0.5, 1.0], [1.0, 0.5, 0.0])
    0.5
    """
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise validation.invalid(
            "`curve_area`", "values", "1-D, of the length (>= 2) of "
            "`fractions`",
            received=f"shapes {x.shape} (fractions) and {y.shape} (values)",
        )
    if x[0] != 0.0 or x[-1] != 1.0 or np.any(np.diff(x) <= 0):
        raise validation.invalid(
            "`curve_area`", "fractions", "increasing strictly from 0 to 1",
            x.tolist(),
        )
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
