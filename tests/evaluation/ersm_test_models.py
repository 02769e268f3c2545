"""Small fixed-weight models whose answers are known by hand."""

import keras
import numpy as np
from keras import ops

from keras_ersm import EnergyMask

# A 4 x 4 grid whose top-left 2 x 2 block is the "object" region R.
REGION = np.zeros((4, 4), np.float32)
REGION[:2, :2] = 1.0


def region_ersm_model(region=REGION, region_score=-5.0, other_score=-3.0,
                      threshold=2.5, **mask_kwargs):
    """ERSM model on (4, 4, 1) images: class 0 iff sum_R y > threshold.

    features = x (1x1 conv, weight 1), y = keep * x with per-position
    scores `region_score` on R and `other_score` elsewhere, logit0 =
    sum_R y, logit1 = threshold. `mask_kwargs` go to the EnergyMask.
    """
    inputs = keras.Input((4, 4, 1))
    features = keras.layers.Conv2D(1, 1, use_bias=False, name="features")(
        inputs
    )
    masked = EnergyMask.from_preset(
        "authors",
        patch_size=1,
        position_bias=True,
        energy_loss_weight=0.0,
        track_kept_fraction=False,
        name="mask",
        **mask_kwargs,
    )(features)
    flat = keras.layers.Flatten()(masked)
    outputs = keras.layers.Dense(2, name="logits")(flat)
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([np.ones((1, 1, 1, 1))])
    scores = np.where(region > 0, region_score, other_score)
    model.get_layer("mask").set_weights(
        [np.zeros((1, 1, 1), np.float32), scores.astype(np.float32)]
    )
    kernel = np.zeros((16, 2), np.float32)
    kernel[:, 0] = region.reshape(-1)
    model.get_layer("logits").set_weights(
        [kernel, np.array([0.0, threshold], np.float32)]
    )
    return model


def region_baseline_model(region=REGION, size=4, other_logit=0.0):
    """Unmasked model on (size, size, 1) images, Grad-CAM known by hand.

    Feature map A = [x * R, x * (1 - R)] (layer "positional"),
    logit0 = mean_R(A_0) - mean(A_1), logit1 = other_logit. Grad-CAM of
    class 0 is relu((A_0 - A_1) / (size * size)) = x * R / (size * size).
    """
    region_tensor = ops.convert_to_tensor(region[None, :, :, None])
    inputs = keras.Input((size, size, 1))
    positional = keras.layers.Lambda(
        lambda x: ops.concatenate(
            [x * region_tensor, x * (1.0 - region_tensor)], axis=-1
        ),
        name="positional",
    )(inputs)
    flat = keras.layers.Flatten()(positional)
    outputs = keras.layers.Dense(2, name="logits")(flat)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((size * size * 2, 2), np.float32)
    kernel[0::2, 0] = region.reshape(-1) / region.sum()
    kernel[1::2, 0] = -1.0 / (size * size)
    model.get_layer("logits").set_weights(
        [kernel, np.array([0.0, other_logit], np.float32)]
    )
    return model


def pooled_linear_model(size, kernel, bias):
    """Logits `mean_pixel @ kernel + bias` of (size, size, C) images, C the
    rows of the (C, 2) `kernel`."""
    kernel = np.asarray(kernel, np.float32)
    inputs = keras.Input((size, size, kernel.shape[0]))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(2, name="logits")(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer("logits").set_weights(
        [kernel, np.asarray(bias, np.float32)]
    )
    return model


def mean_threshold_model(size=8, threshold=0.5):
    """Class 0 iff the mean pixel of a (size, size, 1) image > threshold."""
    return pooled_linear_model(size, [[1.0, 0.0]], [0.0, threshold])
