"""Initializers of this package."""

import math

import keras


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
