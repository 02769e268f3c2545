"""The energy math of keras_ersm.energy against the authors' fixture and an
independent loop-by-loop NumPy transcription."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import reference_numpy as ref
from conftest import FIXTURE_CASES
from conftest import load_reference_case
from conftest import relu_features
from keras_ersm import energy
from keras_ersm import energy_kernel
from keras_ersm.mask_options import AUTHORS


def authors_options(**changes):
    """The authors' energy (sigmoid gates, no scaling), with `changes`."""
    return dataclasses.replace(AUTHORS, **changes)


RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_reference_matches_authors_fixture(case):
    data = load_reference_case(case)
    x = tf.constant(data["x_nhwc"])
    kernel = tf.Variable(data["w_ppc"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs, grids, reg = energy_kernel.apply_energy_mask(
            x, kernel, tf.constant(data["b_grid"]),
            authors_options(
                patch_size=int(data["patch_size"]), formulation="reference",
                unary_weight=float(data["lambda_u"]),
                pairwise_weight=float(data["gamma_p"]),
                temperature=float(data["temperature"]),
            ),
        )
        loss = tf.reduce_mean(tf.square(outputs)) + reg
    grad_x, grad_kernel = tape.gradient(loss, [x, kernel])
    checks = {
        "z": grids["score"],
        "keep_prob": grids["keep"],
        "energy": grids["energy"],
        "y_nhwc": outputs,
        "reg": reg,
        "grad_x_nhwc": grad_x,
        "grad_w_ppc": grad_kernel,
    }
    for key, value in checks.items():
        np.testing.assert_allclose(
            np.asarray(value), data[key], rtol=RTOL, atol=ATOL, err_msg=key
        )
    np.testing.assert_array_equal(grids["mask"], grids["keep"])


@pytest.mark.parametrize("patch_size", [1, 2, 3])
def test_reference_matches_numpy_loops(patch_size):
    x = relu_features((2, 3 * patch_size, 4 * patch_size, 5), seed=patch_size)
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(patch_size, patch_size, 5)).astype("float32")
    bias = np.float32(0.3)
    outputs, grids, loss = energy_kernel.apply_energy_mask(
        x, kernel, bias,
        authors_options(
            patch_size=patch_size, formulation="reference", unary_weight=0.4,
            pairwise_weight=0.7, temperature=1.5,
        ),
    )
    z, keep, energy_grid, expected_loss = ref.reference_layer(
        x, kernel, bias, patch_size, 0.4, 0.7, 1.5
    )
    np.testing.assert_allclose(grids["score"], z, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grids["keep"], keep, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grids["energy"], energy_grid, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        outputs, ref.apply_mask(x, keep, patch_size), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("kind", ["uniform", "affinity"])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_coherent_matches_numpy_loops(kind, patch_size):
    x = relu_features((2, 5 * patch_size, 4 * patch_size, 6), seed=3)
    rng = np.random.default_rng(11)
    kernel = rng.normal(size=(patch_size, patch_size, 6)).astype("float32")
    bias = np.float32(-0.5)
    settings = dict(coupling=0.8, steps=3, damping=0.7)
    outputs, grids, loss = energy_kernel.apply_energy_mask(
        x, kernel, bias,
        authors_options(
            patch_size=patch_size, formulation="coherent", unary_weight=0.3,
            pairwise_weight=0.6, temperature=1.2,
            coupling=settings["coupling"], mean_field_steps=settings["steps"],
            damping=settings["damping"], neighbour_weights=kind,
        ),
    )
    z, mask, energy_grid, expected_loss = ref.coherent_layer(
        x, kernel, bias, patch_size, 0.3, 0.6, 1.2,
        settings["coupling"], settings["steps"], settings["damping"], kind,
    )
    np.testing.assert_allclose(grids["mask"], mask, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grids["keep"], ref.sigmoid(-z / 1.2), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grids["energy"], energy_grid, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        outputs, ref.apply_mask(x, mask, patch_size), rtol=RTOL, atol=ATOL
    )
    # The coupling moved the mask away from the independent keep values.
    assert np.max(np.abs(mask - ref.sigmoid(-z / 1.2))) > 1e-2


def test_coherent_without_coupling_is_the_reference_mask():
    x = relu_features((2, 6, 6, 4), seed=5)
    kernel = np.random.default_rng(0).normal(size=(1, 1, 4)).astype("float32")
    _, grids, _ = energy_kernel.apply_energy_mask(
        x, kernel, np.float32(0.0),
        authors_options(
            patch_size=1, formulation="coherent", unary_weight=0.0,
            pairwise_weight=0.0, temperature=1.0, coupling=0.0,
            mean_field_steps=4,
        ),
    )
    np.testing.assert_allclose(grids["mask"], grids["keep"], atol=1e-7)


def test_zero_tokens_are_finite():
    x = np.zeros((2, 4, 4, 8), "float32")
    kernel = np.ones((1, 1, 8), "float32")
    log2 = np.log(2.0)
    # Zero tokens: z = 0 (projection 0, bias 0), keep = sigmoid(0) = 1/2,
    # every cosine is 0. "reference": energy = 0.5 softplus(0) +
    # 2 softplus(0) = 2.5 log 2, loss = 1/2 * 2.5 log 2. "coherent":
    # m = 1/2 everywhere is a fixed point of the updates (1 - 2 m_j = 0),
    # so no disagreement: energy = 0.5 log 2, loss = 1/2 * 0.5 log 2.
    expected = {"reference": (2.5 * log2, 1.25 * log2),
                "coherent": (0.5 * log2, 0.25 * log2)}
    for formulation, (expected_energy, expected_loss) in expected.items():
        outputs, grids, loss = energy_kernel.apply_energy_mask(
            x, kernel, np.float32(0.0),
            authors_options(
                patch_size=1, formulation=formulation, unary_weight=0.5,
                pairwise_weight=2.0, temperature=1.0, coupling=0.5,
                mean_field_steps=2,
            ),
        )
        for value in [outputs, loss, *grids.values()]:
            assert np.all(np.isfinite(value))
        np.testing.assert_array_equal(outputs, 0.0)
        np.testing.assert_array_equal(grids["score"], 0.0)
        np.testing.assert_allclose(grids["keep"], 0.5)
        np.testing.assert_allclose(grids["mask"], 0.5)
        np.testing.assert_allclose(grids["energy"], expected_energy,
                                   rtol=1e-6)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)


def _field(scores, kind, seed):
    """The four forward-neighbour weight grids for the mean-field tests."""
    if kind == "uniform":
        return energy.uniform_affinities(scores)
    x = relu_features((3, 7, 9, 8), seed=seed)
    weights = ref.neighbour_weights(x, 1, "affinity")
    forward = [ref.NEIGHBOURS.index(o) for o in energy.FORWARD_OFFSETS]
    return [ops.convert_to_tensor(weights[..., k], "float32") for k in forward]


@pytest.mark.parametrize("kind", ["uniform", "affinity"])
@pytest.mark.parametrize("coupling", [0.25, 1.0, 3.0])
@pytest.mark.parametrize("damping", [1.0, 0.5])
def test_mean_field_never_raises_the_free_energy(kind, coupling, damping):
    rng = np.random.default_rng(int(coupling * 10))
    scores = rng.normal(-1.0, 2.0, size=(3, 7, 9)).astype("float32")
    affinities = _field(scores, kind, seed=1)
    settings = dict(coupling=coupling, temperature=1.0)
    initial = ops.sigmoid(-scores)
    free_energies = [
        energy.mean_field_free_energy(
            scores, affinities,
            energy.mean_field(scores, affinities, initial, steps=steps,
                              damping=damping, **settings),
            **settings,
        )
        for steps in range(6)
    ]
    free_energies = np.stack([np.asarray(f) for f in free_energies])
    # Per example, every sweep lowers F (up to float32 round-off) ...
    assert np.all(np.diff(free_energies, axis=0) <= 1e-3)
    # ... and the final mask is strictly better than the initial one.
    assert np.all(free_energies[-1] < free_energies[0] - 1e-2)


@pytest.mark.parametrize("kind", ["uniform", "affinity"])
def test_mean_field_residual_shrinks_with_steps(kind):
    rng = np.random.default_rng(2)
    scores = rng.normal(-1.0, 2.0, size=(3, 7, 9)).astype("float32")
    affinities = _field(scores, kind, seed=2)
    settings = dict(coupling=0.5, temperature=1.0)
    initial = ops.sigmoid(-scores)
    residuals = [
        float(energy.mean_field_residual(
            scores, affinities,
            energy.mean_field(scores, affinities, initial, steps=steps,
                              damping=1.0, **settings),
            **settings,
        ))
        for steps in (0, 1, 2, 4, 8)
    ]
    assert all(b < a for a, b in zip(residuals, residuals[1:])), residuals
    assert residuals[0] > 0.1 and residuals[-1] < 1e-3, residuals


def test_neighbour_weighted_sum_counts_in_grid_neighbours():
    ones = np.ones((1, 3, 4), "float32")
    stencil = energy.neighbour_stencil(energy.uniform_affinities(ones))
    counts = energy.stencil_weighted_sum(stencil, ones)
    expected = np.array([[3, 5, 5, 3], [5, 8, 8, 5], [3, 5, 5, 3]], "float32")
    np.testing.assert_array_equal(np.asarray(counts)[0], expected)


def test_single_token_grid():
    x = relu_features((2, 1, 1, 3), seed=9)
    for formulation in ("reference", "coherent"):
        outputs, grids, _ = energy_kernel.apply_energy_mask(
            x, np.ones((1, 1, 3), "float32"), np.float32(0.0),
            authors_options(
                patch_size=1, formulation=formulation, unary_weight=0.5,
                pairwise_weight=2.0, temperature=1.0, coupling=1.0,
                mean_field_steps=2,
            ),
        )
        assert outputs.shape == x.shape
        # No neighbours: the coherent mask is the independent keep value.
        np.testing.assert_allclose(grids["mask"], grids["keep"], atol=1e-6)
        # z = sum(x) / (||x|| + eps) (kernel of ones, bias 0).
        z = x.sum(axis=(1, 2, 3)) / (np.linalg.norm(x[:, 0, 0], axis=-1)
                                     + energy.NORM_EPSILON)
        np.testing.assert_allclose(grids["score"][:, 0, 0], z, rtol=1e-6)
        # Pairwise: "reference" softplus of an empty sum, softplus(0) =
        # log 2; "coherent" an empty sum of disagreements, 0.
        pairwise = np.log(2.0) if formulation == "reference" else 0.0
        np.testing.assert_allclose(
            grids["energy"][:, 0, 0],
            0.5 * np.logaddexp(0.0, z) + 2.0 * pairwise, rtol=1e-6,
        )


def test_logistic_noise_is_standard_logistic():
    # The hard-concrete gate's noise: its law sets P(gate open), so the
    # sampler is checked against Logistic(0, 1) itself, not through a fit.
    n = 10**6
    samples = np.sort(np.asarray(
        energy.logistic_noise((25, 200, 200), seed=3), np.float64
    ).ravel())
    assert samples.size == n
    # Kolmogorov-Smirnov against F(x) = sigmoid(x). DKW: P(D_n > eps) <=
    # 2 exp(-2 n eps^2), so eps at failure probability 1e-9 is ~0.0033;
    # scale 2 gives D ~0.15, a scale 5% off D ~0.01.
    cdf = ref.sigmoid(samples)
    ranks = np.arange(1, n + 1) / n
    statistic = max(np.max(ranks - cdf), np.max(cdf - (ranks - 1.0 / n)))
    assert statistic < np.sqrt(np.log(2 / 1e-9) / (2 * n)), statistic
    # Mean 0, variance pi^2 / 3 (fourth central moment 7 pi^4 / 15), each
    # within 6 standard errors of its estimate (CLT, ~2e-9 each).
    variance = np.pi**2 / 3
    variance_error = np.sqrt((7 * np.pi**4 / 15 - variance**2) / n)
    assert abs(samples.mean()) < 6 * np.sqrt(variance / n)
    assert abs(samples.var() - variance) < 6 * variance_error, samples.var()
