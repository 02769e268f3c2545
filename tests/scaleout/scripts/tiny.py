"""A tiny, seeded conv model with an EnergyMask, shared by the scripts here.

Scripts in this folder run in their own Python processes (TensorFlow device
setup and op determinism are process-wide); Python puts this folder on their
`sys.path`, so `import tiny` works from each of them.
"""

import keras
import numpy as np

from keras_ersm import EnergyMask
from keras_ersm import presets

IMAGE_SHAPE = (8, 8, 3)
CLASSES = 3


def data(size, seed=0):
    """`size` random images and labels, a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    images = rng.random((size, *IMAGE_SHAPE)).astype("float32")
    return images, (np.arange(size) % CLASSES).astype("int32")


def build_model(seed=0, dropout=0.0, **mask_kwargs):
    """Conv(4) -> EnergyMask "mask" -> GAP -> [Dropout] -> Dense(3).

    Initial weights are a function of `seed`; with `seed=None` they are
    drawn from Keras's global seed (`keras.utils.set_random_seed`). The mask
    starts with spread-out scores (part of the tokens kept) and strong energy
    weights, so that the energy loss visibly moves the weights.
    """

    def offset(step):
        return None if seed is None else seed + step

    # The authors' energy: deterministic sigmoid gates, so that runs on
    # one and on several devices can be compared value for value.
    mask_kwargs = {
        **presets.mask_kwargs("authors"),
        "patch_size": 2,
        "unary_weight": 1.0,
        "pairwise_weight": 1.0,
        "score_kernel_initializer": keras.initializers.RandomNormal(
            stddev=3.0, seed=seed
        ),
        "score_bias_initializer": keras.initializers.Constant(-1.5),
        **mask_kwargs,
    }
    inputs = keras.Input(IMAGE_SHAPE)
    features = keras.layers.Conv2D(
        4,
        3,
        padding="same",
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=offset(1)),
        name="conv",
    )(inputs)
    masked = EnergyMask(name="mask", **mask_kwargs)(features)
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    if dropout:
        pooled = keras.layers.Dropout(dropout)(pooled)
    outputs = keras.layers.Dense(
        CLASSES,
        kernel_initializer=keras.initializers.GlorotUniform(seed=offset(2)),
        name="head",
    )(pooled)
    return keras.Model(inputs, outputs)


def masks(model, images):
    """The applied mask grids of the model's EnergyMask for `images`."""
    features = model.get_layer("conv")(images)
    return np.asarray(model.get_layer("mask").explain(features)["mask"])


def compile_for_classification(model, learning_rate=0.05, jit_compile=False):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
