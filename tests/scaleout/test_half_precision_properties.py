"""Property tests that tests/test_properties.py leaves out.

Half-precision inputs (float16, bfloat16) keep their dtype, and the mask,
energy and gradients stay finite there for +-1e3 activations over 2048
channels, all-zero inputs and temperatures from 1e-6 to 1e6. Example
counts are bounded to keep the file fast.
"""

import keras
import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_ersm import EnergyMask
from keras_ersm import presets

BOUNDED = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def half_precision_case(draw):
    patch_size = draw(st.sampled_from([1, 2]))
    shape = (
        draw(st.integers(1, 2)),
        patch_size * draw(st.integers(1, 3)),
        patch_size * draw(st.integers(1, 3)),
        draw(st.sampled_from([1, 5, 2048])),
    )
    kwargs = dict(
        presets.mask_kwargs("authors"),
        patch_size=patch_size,
        formulation=draw(st.sampled_from(["reference", "coherent"])),
        unary_weight=draw(st.sampled_from([0.0, 1e-3, 10.0])),
        pairwise_weight=draw(st.sampled_from([0.0, 1e-3, 10.0])),
        mean_field_steps=draw(st.integers(0, 2)),
        neighbour_weights=draw(st.sampled_from(["uniform", "affinity"])),
        score_kernel_initializer=keras.initializers.RandomNormal(
            seed=draw(st.integers(0, 100))
        ),
        # "float16": float16 compute; "mixed_float16": float16 compute and
        # float32 variables (the layer's are float32 either way).
        dtype=draw(
            st.sampled_from(
                ["float16", "mixed_float16", "bfloat16", "mixed_bfloat16"]
            )
        ),
    )
    kwargs["temperature"] = draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e6]))
    scale = draw(st.sampled_from([0.0, 1.0, 1e3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = scale * rng.uniform(-1.0, 1.0, size=shape)
    return kwargs, x


@BOUNDED
@given(half_precision_case())
def test_half_precision_dtype_range_and_finite_gradients(case):
    kwargs, x = case
    layer = EnergyMask(**kwargs)
    dtype = layer.compute_dtype
    x = tf.constant(x, dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x)
        # A pooled head's loss (a mean, in float32); the sum's upstream
        # gradient of 1 is checked by the float16 tests below.
        loss = tf.reduce_mean(tf.cast(outputs, "float32")) + tf.add_n(
            layer.losses + [0.0]
        )
    grad_x, *grad_weights = tape.gradient(
        loss, [x, *[w.value for w in layer.trainable_weights]]
    )
    assert outputs.shape == x.shape and outputs.dtype == x.dtype
    grids = layer.explain(x)
    for name, grid in grids.items():
        assert grid.dtype == "float32"
        assert np.all(np.isfinite(grid)), name
    for name in ("keep", "mask"):
        assert np.all((grids[name] >= 0) & (grids[name] <= 1)), name
    # Masking only scales: |out| <= |x| (exactly 0 for an all-zero input).
    absolute = np.abs(np.asarray(tf.cast(x, "float32")))
    assert np.all(np.abs(np.asarray(tf.cast(outputs, "float32"))) <= absolute)
    assert grad_x.dtype == x.dtype
    for gradient in [grad_x, *grad_weights]:
        assert np.all(np.isfinite(np.asarray(tf.cast(gradient, "float32"))))


def test_all_zero_input_keeps_the_bias_decision_and_zero_norm_gradient():
    # A dead feature map: ||x|| = 0 must not divide by zero; the score is the
    # bias alone, so every token gets keep 0.95 at initialisation.
    layer = EnergyMask.from_preset(
        "authors", patch_size=2, formulation="coherent")
    x = tf.zeros((2, 4, 4, 8))
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x)
        loss = tf.reduce_sum(outputs) + layer.losses[0]
    gradient = tape.gradient(loss, x)
    np.testing.assert_array_equal(outputs, np.zeros((2, 4, 4, 8)))
    np.testing.assert_allclose(
        layer.explain(x)["keep"], np.full((2, 2, 2), 0.95), rtol=1e-6,
    )
    assert np.all(np.isfinite(gradient))
    # d(sum(out))/dx = mask where the kernel is zero (the default).
    np.testing.assert_allclose(
        gradient[0, 0, 0, 0], layer.explain(x)["mask"][0, 0, 0], rtol=1e-5
    )


# The input gradient of an all-zero token used to be w / eps (eps = 1e-6, as
# the authors), ~1e6 |w|, which overflowed float16 when cast back to the
# input dtype; the gradient through the normalisation of a zero-norm token is
# now defined as 0 (see keras_ersm.energy.live_statistics).
def test_float16_all_zero_input_gradient_is_finite():
    layer = EnergyMask.from_preset(
        "authors", 
        unary_weight=10.0,
        dtype="mixed_float16",
        score_kernel_initializer=keras.initializers.RandomNormal(
            stddev=1.0, seed=0
        ),
    )
    x = tf.zeros((1, 2, 2, 8), dtype="float16")
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x)
        loss = tf.reduce_sum(tf.cast(outputs, "float32")) + layer.losses[0]
    gradient = tape.gradient(loss, x)
    assert np.all(np.isfinite(np.asarray(gradient, "float32")))


# The mask's gradient, sum(x * upstream) over a token's C*p*p values, is
# reduced in float32 (keras_ersm.energy_kernel._mask_gradient); in float16
# it would overflow for +-1e3 activations over 2048 channels and an
# upstream of 1.
def test_float16_mask_gradient_of_large_activations_is_finite():
    x = np.random.default_rng(0).uniform(-1e3, 1e3, (1, 4, 2, 2048))
    x = tf.constant(x, dtype="float16")
    layer = EnergyMask.from_preset(
        "authors", 
        patch_size=2,
        temperature=1e6,
        dtype="mixed_float16",
        score_kernel_initializer=keras.initializers.RandomNormal(seed=3),
    )
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.cast(layer(x), "float32"))
    gradient = tape.gradient(loss, x)
    assert np.all(np.isfinite(np.asarray(gradient, "float32")))


def test_zero_token_gradient_is_the_mask_alone_in_every_dtype():
    # The normalised direction of a zero token gets gradient 0 (not w / eps):
    # d(sum(out) + loss)/dx at a zero token is its mask value, whatever the
    # kernel, and the same in float32 and float16. Neighbouring live tokens
    # (one zero token among random ones) keep finite gradients.
    x = np.random.default_rng(1).uniform(0.5, 1.0, (1, 4, 4, 8))
    x[0, 1, 2] = 0.0
    results = {}
    for dtype in ("float32", "mixed_float16"):
        for formulation in ("reference", "coherent"):
            layer = EnergyMask.from_preset(
        "authors", 
                formulation=formulation,
                neighbour_weights="affinity",
                mean_field_steps=1,
                unary_weight=10.0,
                dtype=dtype,
                score_kernel_initializer=keras.initializers.RandomNormal(
                    stddev=1.0, seed=0
                ),
            )
            inputs = tf.constant(x, dtype=layer.compute_dtype)
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = tf.reduce_sum(tf.cast(layer(inputs), "float32"))
                # The energy loss depends on the zero token's score: with
                # the literal gradient w / eps it would swamp the mask.
                loss = loss + tf.cast(tf.add_n(layer.losses), "float32")
            gradient = np.asarray(tape.gradient(loss, inputs), "float32")
            mask = layer.explain(inputs)["mask"]
            assert np.all(np.isfinite(gradient))
            np.testing.assert_allclose(
                gradient[0, 1, 2], np.full(8, mask[0, 1, 2]), rtol=1e-3
            )
            results[dtype, formulation] = gradient[0, 1, 2]
    for formulation in ("reference", "coherent"):
        np.testing.assert_allclose(
            results["float32", formulation],
            results["mixed_float16", formulation],
            rtol=1e-3,
        )
