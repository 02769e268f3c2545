"""Energy-Regularized Spatial Masking (ERSM) for Keras 3."""

from keras_ersm.layers import EnergyMask
from keras_ersm.models import attach
from keras_ersm.models import build_classifier
from keras_ersm.models import mask_model
from keras_ersm.saved_model import export

__version__ = "0.2.0"

__all__ = ["EnergyMask", "attach", "build_classifier", "export", "mask_model"]
