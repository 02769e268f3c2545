"""The fast path of keras_ersm.energy_kernel: the token statistics and the
hand-written gradient against NumPy loops and against autodiff."""

import numpy as np
import pytest
import tensorflow as tf

import reference_numpy as ref
from conftest import relu_features
from keras_ersm import energy
from keras_ersm import energy_kernel
from keras_ersm import xla
from keras_ersm.mask_options import MaskOptions

RTOL, ATOL = 1e-4, 1e-5


def test_block_width():
    assert energy_kernel._block_width(7, 1) == 7
    assert energy_kernel._block_width(16, 1) == 16
    assert energy_kernel._block_width(28, 1) == 14
    assert energy_kernel._block_width(56, 1) == 14
    assert energy_kernel._block_width(112, 1) == 16
    assert energy_kernel._block_width(28, 2) == 14
    assert energy_kernel._block_width(36, 3) == 12
    assert energy_kernel._block_width(58, 1) == 58  # only 2 and 29 divide it
    assert energy_kernel._block_width(34, 2) == 34  # no even divisor in [8, 16]


def forward_pairs(gh, gw):
    """`(statistic index, i, j, i + dy, j + dx)` of every in-grid forward
    pair, for each (dy, dx) in `FORWARD_OFFSETS` (statistics 2 to 5)."""
    for k, (dy, dx) in enumerate(energy.FORWARD_OFFSETS, start=2):
        for i in range(gh):
            for j in range(gw):
                if 0 <= i + dy < gh and 0 <= j + dx < gw:
                    yield k, i, j, i + dy, j + dx


def numpy_token_statistics(x, kernel, p):
    """Norms, projections and forward-neighbour dot products, by loops."""
    t = ref.tokens(x, p).astype(np.float64)
    flat_kernel = ref.tokens(kernel[None], p)[0, 0, 0].astype(np.float64)
    b, gh, gw, _ = t.shape
    stats = np.zeros((6, b, gh, gw))
    stats[0] = np.sum(t * t, axis=-1)
    stats[1] = t @ flat_kernel
    for k, i, j, ni, nj in forward_pairs(gh, gw):
        stats[k, :, i, j] = np.sum(t[:, i, j] * t[:, ni, nj], axis=-1)
    return stats


def numpy_statistics_vjp(x, kernel, p, upstream, d_through):
    """d/dx and d/dkernel of sum(upstream * statistics) + sum(d_through * x)."""
    t = ref.tokens(x, p).astype(np.float64)
    flat_kernel = ref.tokens(kernel[None], p)[0, 0, 0].astype(np.float64)
    b, gh, gw, _ = t.shape
    d_t = 2.0 * upstream[0][..., None] * t
    d_t += upstream[1][..., None] * flat_kernel
    for k, i, j, ni, nj in forward_pairs(gh, gw):
        g = upstream[k][:, i, j, None]
        d_t[:, i, j] += g * t[:, ni, nj]
        d_t[:, ni, nj] += g * t[:, i, j]
    d_kernel = np.einsum("bhw,bhwv->v", upstream[1], t)
    c = x.shape[-1]

    def untoken(v):
        v = v.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return v.reshape(b, gh * p, gw * p, c)

    return untoken(d_t) + d_through, d_kernel.reshape(p, p, c)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("shape,patch_size", [
    ((2, 5, 7, 6), 1), ((1, 1, 4, 3), 1), ((3, 4, 6, 5), 2), ((2, 6, 3, 4), 3),
    # Rows split into Gram blocks (`_block_width`): 36 = 3 x 12, 40 = 4 x 10,
    # 45 = 3 x 15, and a single pixel row.
    ((2, 3, 36, 4), 1), ((1, 1, 36, 3), 1), ((2, 4, 40, 3), 2),
    ((1, 6, 45, 2), 3),
])
@pytest.mark.parametrize("gram", ["image", "rows"])
def test_token_statistics_and_input_gradient_match_numpy_loops(
    shape, patch_size, jit, gram, monkeypatch
):
    # Upstream gradients are random everywhere, also where a neighbour is
    # off the grid (there the statistic is a constant 0, and the gradient
    # must ignore them: the backward pass gathers clamped neighbours).
    # Every shape once from one Gram matrix per image (`_image_diagonals`,
    # the default up to 8x8 pixels) and once from Gram matrices of rows.
    monkeypatch.setattr(
        energy_kernel, "MAX_IMAGE_GRAM_PIXELS",
        10**9 if gram == "image" else 0,
    )
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(patch_size, patch_size, shape[-1])).astype(
        "float32"
    )
    grid = (shape[0], shape[1] // patch_size, shape[2] // patch_size)
    upstream = rng.normal(size=(6,) + grid).astype("float32")
    mask = rng.uniform(size=grid).astype("float32")
    d_outputs = rng.normal(size=shape).astype("float32")

    @tf.function(jit_compile=jit)
    def statistics_and_gradient(x, kernel):
        statistics = energy_kernel._token_statistics_forward(
            x, kernel, patch_size, pairs=True
        )
        d_statistics = energy.TokenStatistics(
            upstream[0], upstream[1], tuple(upstream[2:])
        )
        gradients = energy_kernel._input_gradient(
            x, kernel, mask, d_outputs, d_statistics, patch_size=patch_size,
            materialise=jit,
        )
        return statistics, gradients

    statistics, (d_x, d_kernel) = statistics_and_gradient(x, kernel)
    assert isinstance(statistics, energy.TokenStatistics)
    flat = [statistics.squared_norms, statistics.projections,
            *statistics.neighbour_dots]
    np.testing.assert_allclose(
        np.stack(flat), numpy_token_statistics(x, kernel, patch_size),
        rtol=RTOL, atol=ATOL,
    )
    pixel_mask = np.repeat(np.repeat(mask, patch_size, 1), patch_size, 2)
    expected_x, expected_kernel = numpy_statistics_vjp(
        x, kernel, patch_size, upstream, d_outputs * pixel_mask[..., None]
    )
    np.testing.assert_allclose(d_x, expected_x, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_kernel, expected_kernel, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("formulation,weights,patch_size", [
    ("reference", "uniform", 1), ("reference", "uniform", 2),
    ("coherent", "uniform", 1), ("coherent", "affinity", 2),
])
def test_hand_written_gradient_matches_autodiff(
    formulation, weights, patch_size, monkeypatch
):
    # Random cotangents on every output (the map, each grid, the loss);
    # the same forward ops differentiated by TensorFlow (the path of
    # backends without a hand-written gradient) must agree.
    rng = np.random.default_rng(patch_size)
    shape = (2, 4 * patch_size, 5 * patch_size, 6)
    x = tf.constant(relu_features(shape, seed=3))
    kernel = tf.constant(
        rng.normal(size=(patch_size, patch_size, 6)).astype("float32")
    )
    bias = tf.constant(
        rng.normal(size=(4, 5)).astype("float32") * 0.5
    )
    cotangents = [
        tf.constant(rng.normal(size=shape).astype("float32"))
    ] + [
        tf.constant(rng.normal(size=(2, 4, 5)).astype("float32"))
        for _ in energy.GRID_KEYS
    ]

    def gradients():
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, bias])
            outputs, grids, loss = energy_kernel.apply_energy_mask(
                x, kernel, bias,
                MaskOptions(
                    patch_size=patch_size, formulation=formulation,
                    unary_weight=0.3, pairwise_weight=0.6, temperature=0.8,
                    coupling=0.7, mean_field_steps=2, damping=0.8,
                    neighbour_weights=weights,
                ),
            )
            total = tf.reduce_sum(outputs * cotangents[0]) + 2.5 * loss
            for key, cotangent in zip(energy.GRID_KEYS, cotangents[1:]):
                total += tf.reduce_sum(grids[key] * cotangent)
        return tape.gradient(total, [x, kernel, bias])

    hand_written = gradients()
    monkeypatch.setattr(energy_kernel.autodiff, "BACKENDS", ())
    automatic = gradients()
    for name, ours, theirs in zip(("x", "kernel", "bias"), hand_written,
                                  automatic):
        np.testing.assert_allclose(
            ours, theirs, rtol=1e-4, atol=1e-5, err_msg=name
        )


def test_xla_compiled_paths_match_plain_ops_on_the_same_noise():
    # The same training call three ways, fed the same gate noise: plain
    # TensorFlow ops (`serving_trace`), the default (grid math and backward
    # passes as XLA kernels) and one XLA-compiled step (the step of
    # `jit_compile=True`, where slices are copied). Only
    # float32 rounding may differ. 6x20 pixels take the row Gram matrices
    # and blocks of 10 (`_across_blocks`). The default energy only: a
    # whole coherent step takes ~10 s to compile.
    rng = np.random.default_rng(1)
    shape, grid = (2, 6, 20, 8), (2, 3, 10)
    x = tf.constant(relu_features(shape, seed=5))
    kernel = tf.constant(rng.normal(size=(2, 2, 8)).astype("float32"))
    bias = tf.constant(np.float32(-0.3))
    noise = tf.constant(rng.logistic(size=grid).astype("float32"))
    cotangents = [rng.normal(size=shape).astype("float32")] + [
        rng.normal(size=grid).astype("float32") for _ in energy.GRID_KEYS
    ]
    options = MaskOptions(patch_size=2, unary_weight=0.3, pairwise_weight=0.6)
    # The default gates and scaling, so the noise matters.
    assert (options.gate, options.output_scaling) == ("hard_concrete",
                                                      "mask_mass")

    def step(x, kernel, bias, noise):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, bias])
            outputs, grids, loss = energy_kernel.apply_energy_mask(
                x, kernel, bias, options, noise=noise
            )
            total = tf.reduce_sum(outputs * cotangents[0]) + 2.5 * loss
            for key, cotangent in zip(energy.GRID_KEYS, cotangents[1:]):
                total += tf.reduce_sum(grids[key] * cotangent)
        gradients = tape.gradient(total, [x, kernel, bias])
        return [outputs, *grids.values(), loss, *gradients]

    names = ["outputs", *energy.GRID_KEYS, "loss", "d_x", "d_kernel",
             "d_bias"]
    with xla.serving_trace():
        plain = step(x, kernel, bias, noise)
    kernels = step(x, kernel, bias, noise)
    whole = tf.function(step, jit_compile=True)(x, kernel, bias, noise)
    # Not a degenerate draw: some gates closed, some open, some between.
    mask = np.asarray(plain[4])
    assert np.any(mask == 0) and np.any(mask == 1)
    assert np.any((mask > 0) & (mask < 1))
    for path, values in (("kernels", kernels), ("whole step", whole)):
        for name, ours, expected in zip(names, values, plain):
            np.testing.assert_allclose(
                ours, expected, rtol=1e-5, atol=1e-6,
                err_msg=f"{path}: {name}",
            )
