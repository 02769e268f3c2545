"""The benchmarks' cases, free of any backend (the GPU check runs them on
JAX without TensorFlow): the feature-map shapes of `layer_cost.py`, the map
dtypes, the layer under test and the ResNet50 of the training-step
benchmarks."""

import keras

from keras_ersm import presets
from keras_ersm.layers.energy_mask import EnergyMask

SHAPES = {
    "7x7x2048": ((32, 7, 7, 2048), 1),
    "14x14x1024": ((32, 14, 14, 1024), 1),
    "28x28x512": ((32, 28, 28, 512), 1),
    "14x14x2048 p2": ((32, 14, 14, 2048), 2),
    # Not in the targets: an early placement (ResNet50 conv2_x at
    # 224x224), where whole-row Gram matrices would be 56 pixels wide.
    "56x56x256": ((32, 56, 56, 256), 1),
}

# The GPU check's tiny shapes (`--smoke`).
SMOKE_SHAPES = {
    "smoke 2x2x64": ((2, 2, 2, 64), 1),
    "smoke 4x4x32 p2": ((2, 4, 4, 32), 2),
}

# The mid placement of `resnet50`.
MID = "conv4_block6_out"

# Dtypes of the feature maps the benchmarks can use.
MAP_DTYPES = ("float32", "bfloat16", "float16")


def use_map_dtype(dtype):
    """Build layers for maps of `dtype` from now on: the matching
    mixed-precision policy for a reduced dtype, float32 otherwise."""
    keras.mixed_precision.set_global_policy(
        "float32" if dtype == "float32" else f"mixed_{dtype}"
    )


# The layer configurations benchmarked, by name: the two formulations at
# their defaults, and the configuration whose mask learns (the default of
# `ersm train`: keeping cost, hard-concrete gates, mask-mass scaling).
MASK_CANDIDATES = {
    "reference": presets.mask_kwargs("authors"),
    "coherent": dict(presets.mask_kwargs("authors"), formulation="coherent"),
    "learned": presets.mask_kwargs("learned"),
}


def make_energy_mask(candidate, patch_size, shape):
    """An EnergyMask of `MASK_CANDIDATES[candidate]` built for maps of
    `shape`, random-normal score kernel."""
    layer = EnergyMask(
        patch_size=patch_size,
        score_kernel_initializer="random_normal",
        **MASK_CANDIDATES[candidate],
    )
    layer.build(shape)
    return layer


def resnet50(placement, size=64, classes=10, formulation="reference",
             mask_factory=None, jit_compile=False):
    """ResNet50 with an optional EnergyMask at `placement` (None/head/mid)."""
    make = mask_factory or (
        lambda: EnergyMask(formulation=formulation, name="energy_mask")
    )
    base = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(size, size, 3)
    )
    if placement == "mid":
        def call_function(layer, *args, **kwargs):
            out = layer(*args, **kwargs)
            if layer.name == MID:
                out = make()(out)
            return out

        base = keras.models.clone_model(
            base, clone_function=lambda layer: layer,
            call_function=call_function,
        )
    features = base.output
    if placement == "head":
        features = make()(features)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(classes, activation="softmax")(pooled)
    model = keras.Model(base.input, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss="sparse_categorical_crossentropy",
        jit_compile=jit_compile,
    )
    return model
