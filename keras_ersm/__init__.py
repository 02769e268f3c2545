"""Energy-Regularized Spatial Masking (ERSM) for Keras 3."""

from keras_ersm.layers import EnergyMask

__version__ = "0.1.0"

__all__ = ["EnergyMask"]
