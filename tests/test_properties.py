"""Property-based tests of EnergyMask: shapes, dtypes, ranges, finiteness.

Example counts are bounded so the whole file stays well under a minute.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_ersm import EnergyMask
from keras_ersm import presets

BOUNDED = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def layer_and_input(draw):
    patch_size = draw(st.sampled_from([1, 2, 3]))
    height = patch_size * draw(st.integers(1, 4))
    width = patch_size * draw(st.integers(1, 4))
    channels = draw(st.integers(1, 9))
    batch = draw(st.integers(1, 3))
    formulation = draw(st.sampled_from(["reference", "coherent"]))
    # Sigmoid gates, no scaling: the output never exceeds the input.
    kwargs = dict(
        presets.mask_kwargs("authors"),
        patch_size=patch_size,
        formulation=formulation,
        unary_weight=draw(st.floats(0.0, 10.0)),
        pairwise_weight=draw(st.floats(0.0, 10.0)),
        temperature=draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3])),
        mean_field_steps=draw(st.integers(0, 3)),
        coupling=draw(st.floats(0.0, 5.0)),
        neighbour_weights=draw(st.sampled_from(["uniform", "affinity"])),
        score_kernel_initializer=keras.initializers.RandomNormal(
            stddev=draw(st.sampled_from([0.0, 1.0, 100.0])),
            seed=draw(st.integers(0, 100)),
        ),
    )
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.0, 1e-6, 1.0, 1e3]))
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(batch, height, width, channels))).astype(
        "float32"
    )
    return kwargs, x


@BOUNDED
@given(layer_and_input())
def test_shapes_ranges_and_finite_gradients(case):
    kwargs, x = case
    layer = EnergyMask(**kwargs)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x)
        loss = tf.reduce_sum(outputs) + tf.add_n(layer.losses + [0.0])
    grad_x, *grad_weights = tape.gradient(
        loss, [x, *[w.value for w in layer.trainable_weights]]
    )
    assert outputs.shape == x.shape and outputs.dtype == x.dtype
    grids = layer.explain(x)
    p = kwargs["patch_size"]
    for name, grid in grids.items():
        assert grid.shape == (x.shape[0], x.shape[1] // p, x.shape[2] // p)
        assert np.all(np.isfinite(grid)), name
    for name in ("keep", "mask"):
        assert np.all((grids[name] >= 0) & (grids[name] <= 1)), name
    assert np.all(np.abs(outputs) <= np.abs(x) + 1e-6)
    for gradient in [grad_x, *grad_weights]:
        assert np.all(np.isfinite(gradient))


@settings(max_examples=6, deadline=None)
@given(
    formulation=st.sampled_from(["reference", "coherent"]),
    seed=st.integers(0, 1000),
)
def test_float16_extreme_activations(formulation, seed):
    # +-1e3 over 2048 channels: the sum of squares (~1e9) overflows float16.
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1e3, 1e3, size=(1, 2, 2, 2048)).astype("float16")
    layer = EnergyMask.from_preset(
        "authors",
        formulation=formulation,
        dtype="mixed_float16",
        score_kernel_initializer=keras.initializers.RandomNormal(seed=seed),
    )
    outputs = layer(x)
    assert outputs.dtype == "float16"
    assert np.all(np.isfinite(np.asarray(outputs, "float32")))
    assert np.isfinite(float(layer.losses[0]))
    assert np.all(np.isfinite(layer.explain(x)["energy"]))


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_input_propagates_and_never_becomes_a_confident_mask(
    formulation, bad_value
):
    x = np.ones((1, 10, 10, 3), "float32")
    x[0, 1, 2, 0] = bad_value
    layer = EnergyMask.from_preset("authors", formulation=formulation,
                                   mean_field_steps=1)
    outputs = np.asarray(layer(x))
    grids = layer.explain(x)
    # The poisoned token's mask is NaN, not a confident 0 or 1 ...
    assert np.isnan(grids["mask"][0, 1, 2])
    assert np.all(np.isnan(outputs[0, 1, 2]))
    # ... and the loss says so too.
    assert np.isnan(float(layer.losses[0]))
    # Far tokens are untouched (a mean-field sweep spreads it a few tokens).
    assert np.all(np.isfinite(grids["mask"][0, 9, 9]))


@pytest.mark.parametrize("position, block", [
    ((32, 32), (slice(20, 45), slice(20, 45))),  # 25 x 25
    ((0, 0), (slice(0, 13), slice(0, 13))),  # cut at the corner: 13 x 13
])
def test_default_sweeps_spread_a_nan_twelve_tokens_each_way(position, block):
    x = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 4)).astype(
        "float32")
    x[(0, *position, 0)] = np.nan
    reference = EnergyMask.from_preset("authors").explain(x)["mask"][0]
    assert np.argwhere(np.isnan(reference)).tolist() == [list(position)]
    coherent = np.isnan(EnergyMask.from_preset(
        "authors", formulation="coherent").explain(x)["mask"][0])
    expected = np.zeros_like(coherent)
    expected[block] = True
    np.testing.assert_array_equal(coherent, expected)
