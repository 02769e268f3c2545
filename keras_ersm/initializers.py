"""Initializers of this package."""

import math

import keras

from keras_ersm import fields
from keras_ersm.mask_options import check_option

# Every token of a fresh `EnergyMask` is kept with this probability: the
# gates start open, and the task decides which close.
DEFAULT_INITIAL_KEEP = 0.95
# The values of an initial keep: the score bias is its logit.
INITIAL_KEEP = fields.number("a number in (0, 1)", lambda v: 0 < v < 1)


@keras.saving.register_keras_serializable(package="keras_ersm")
class FanInUniform(keras.initializers.Initializer):
    """U(-1 / sqrt(n), 1 / sqrt(n)), n the number of entries of the weight.

    PyTorch's default for the weight of a one-output `nn.Linear(n, 1)`
    (Kaiming-uniform with a = sqrt(5)), which is what the authors' score
    kernel of `C * p * p` inputs starts from. Keras's `VarianceScaling`
    would read the fan-in of a (p, p, C) kernel as p * p.

    Args:
        seed: int or None, as Keras's random initializers.

    Example:

    >>> values = FanInUniform(seed=0)((2, 2, 16))
    >>> bool(keras.ops.max(keras.ops.abs(values)) <= 1 / 8)
    True
    """

    def __init__(self, seed=None):
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def __call__(self, shape, dtype=None):
        limit = 1.0 / math.sqrt(max(1, math.prod(shape)))
        return keras.random.uniform(
            shape, -limit, limit, dtype=dtype, seed=self._seed_generator
        )

    def get_config(self):
        return {"seed": self.seed}


def initial_keep_bias(initial_keep=DEFAULT_INITIAL_KEEP, temperature=1.0):
    """The score bias at which every token of a zero-kernel mask starts with
    `keep = sigmoid(-z / T) = initial_keep`, as a Keras initializer.

    Args:
        initial_keep: float in (0, 1).
        temperature: float > 0, the mask's T.

    Returns:
        A `keras.initializers.Constant`.

    Example:

    >>> round(float(initial_keep_bias(0.95).value), 3)
    -2.944
    """
    caller = "`initial_keep_bias`"
    initial_keep = INITIAL_KEEP.check(caller, "initial_keep", initial_keep)
    temperature = check_option(caller, "temperature", temperature)
    return keras.initializers.Constant(
        -temperature * math.log(initial_keep / (1.0 - initial_keep))
    )
