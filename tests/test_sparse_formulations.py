"""The keeping-cost energy, hard-concrete gates and mask-mass scaling:
their math against NumPy loops and finite differences, and the layer's
behaviour with them (training vs inference, serialisation, dtypes, XLA)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src import testing

import reference_numpy as ref
from conftest import relu_features
from keras_ersm import EnergyMask
from keras_ersm import energy
from keras_ersm import energy_kernel
from keras_ersm import presets
from keras_ersm import xla
from keras_ersm.mask_options import MaskOptions

RTOL, ATOL = 1e-4, 1e-5
SPARSE = dict(formulation="keeping_cost", gate="hard_concrete",
              output_scaling="mask_mass")


def case(patch_size, seed=0):
    rng = np.random.default_rng(seed)
    x = relu_features((2, 4 * patch_size, 5 * patch_size, 6), seed + 1)
    kernel = rng.normal(size=(patch_size, patch_size, 6)).astype("float32")
    noise = rng.logistic(size=(2, 4, 5)).astype("float32")
    return x, kernel, np.float32(0.2), noise


SETTINGS = [
    ("keeping_cost", "sigmoid", "none"),
    ("keeping_cost", "hard_concrete", "none"),
    ("keeping_cost", "hard_concrete", "mask_mass"),
    ("reference", "hard_concrete", "mask_mass"),
    ("reference", "sigmoid", "mask_mass"),
    ("coherent", "hard_concrete", "mask_mass"),
]
# The coherent field's own arguments, where SETTINGS use it.
COHERENT = dict(coupling=0.3, mean_field_steps=2,
                neighbour_weights="affinity")
COHERENT_GATED = dict(SPARSE, formulation="coherent", mask_mass_epsilon=0.03,
                      **COHERENT)


# Sigmoid gates draw no noise: training and inference are one computation,
# run once.
FORWARD_CASES = [
    (*setting, training) for setting in SETTINGS
    for training in ((True, False) if setting[1] == "hard_concrete" else
                     (False,))
]


@pytest.mark.parametrize("formulation,gate,scaling,training", FORWARD_CASES)
@pytest.mark.parametrize("patch_size", [1, 2])
def test_forward_matches_numpy_loops(formulation, gate, scaling, training,
                                     patch_size):
    x, kernel, bias, noise = case(patch_size)
    noise = noise if training and gate == "hard_concrete" else None
    coherent = COHERENT if formulation == "coherent" else {}
    outputs, grids, loss = energy_kernel.apply_energy_mask(
        x, kernel, bias,
        MaskOptions(
            patch_size=patch_size, formulation=formulation, unary_weight=0.4,
            pairwise_weight=0.7, temperature=0.7, gate=gate,
            output_scaling=scaling, **coherent,
        ),
        noise=noise,
    )
    if formulation == "coherent":
        z, keep, mask, energy_grid, expected_loss = ref.coherent_gated_layer(
            x, kernel, bias, patch_size, 0.4, 0.7, 0.7, COHERENT["coupling"],
            COHERENT["mean_field_steps"], COHERENT["neighbour_weights"],
            noise,
        )
    elif formulation == "keeping_cost":
        z, keep, mask, energy_grid, expected_loss = ref.keeping_cost_layer(
            x, kernel, bias, patch_size, 0.4, 0.7, 0.7, gate, noise
        )
    else:
        z, _, energy_grid, _ = ref.reference_layer(
            x, kernel, bias, patch_size, 0.4, 0.7, 0.7
        )
        mask, keep = ref.gate_and_keep(z, 0.7, gate, noise)
        expected_loss = np.mean(keep * energy_grid)
    multiplier = ref.mask_mass_multiplier(mask) if scaling == "mask_mass" else mask
    for key, expected in (("score", z), ("keep", keep), ("mask", mask),
                          ("energy", energy_grid)):
        np.testing.assert_allclose(grids[key], expected, rtol=RTOL, atol=ATOL,
                                   err_msg=key)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        outputs, ref.apply_mask(x, multiplier, patch_size), rtol=RTOL,
        atol=ATOL,
    )
    if gate == "hard_concrete" and not training:
        assert set(np.unique(grids["mask"])) <= {0.0, 1.0}


def test_mask_mass_epsilon_scales_by_mass_plus_epsilon():
    x, kernel, bias, noise = case(1)
    outputs, grids, _ = energy_kernel.apply_energy_mask(
        x, kernel, bias,
        MaskOptions(
            patch_size=1, **SPARSE, unary_weight=0.4, pairwise_weight=0.7,
            temperature=0.7, mask_mass_epsilon=0.2,
        ),
        noise=noise,
    )
    _, _, mask, _, _ = ref.keeping_cost_layer(
        x, kernel, bias, 1, 0.4, 0.7, 0.7, "hard_concrete", noise)
    np.testing.assert_allclose(
        outputs, ref.apply_mask(x, ref.mask_mass_multiplier(mask, eps=0.2), 1),
        rtol=RTOL, atol=ATOL)
    layer = EnergyMask(**SPARSE, mask_mass_epsilon=0.2)
    assert EnergyMask.from_config(
        layer.get_config()).options.mask_mass_epsilon == 0.2


def test_keeping_cost_has_no_border_bias():
    # Identical tokens: every cosine is 1, so the mean over neighbours is 1
    # at corners (3), edges (5) and inside (8) alike.
    x = np.ones((1, 5, 6, 4), "float32")
    _, grids, _ = energy_kernel.apply_energy_mask(
        x, np.zeros((1, 1, 4), "float32"), np.float32(0.0),
        MaskOptions(
            patch_size=1, formulation="keeping_cost", unary_weight=0.1,
            pairwise_weight=2.0, temperature=1.0,
        ),
    )
    np.testing.assert_allclose(grids["energy"], 2.1, rtol=1e-5)


def test_hard_concrete_gate_is_zero_or_one_with_positive_probability():
    z = np.zeros((1, 100, 100), "float32")
    noise = np.random.default_rng(0).logistic(size=z.shape).astype("float32")
    gate = np.asarray(energy.hard_concrete_gate(z, 2.0 / 3.0, noise))
    # sigmoid(L / beta) * 1.2 - 0.1 <= 0 iff L <= beta log(1/11).
    expected_zeros = ref.sigmoid(2.0 / 3.0 * np.log(1.0 / 11.0))
    assert abs(np.mean(gate == 0.0) - expected_zeros) < 0.015
    assert abs(np.mean(gate == 1.0) - expected_zeros) < 0.015
    assert 0.0 <= gate.min() and gate.max() <= 1.0


def test_training_gates_of_the_layer_follow_the_hard_concrete_law():
    # The default layer's training-mode masks, sampled many times on one
    # image, against the gate's law given the layer's own scores z:
    # P(g > 0) = hard_concrete_keep(z) and, for 0 <= t < 1,
    # P(g <= t) = sigmoid(z + T logit((t - low) / (high - low))), as
    # L ~ Logistic(0, 1) and g = clip(sigmoid((L - z) / T) (high - low)
    # + low, 0, 1).
    draws, batch = 5, 2000
    layer = EnergyMask(seed=0)
    image = np.random.default_rng(0).normal(size=(1, 6, 6, 3))
    layer.build(image.shape)
    # Scores from about -1.5 to 4.5: keep from ~0.05 to ~0.95.
    layer.score_kernel.assign([[[3.0, -1.0, 0.5]]])
    layer.score_bias.assign(1.5)
    x = np.repeat(image, batch, axis=0).astype("float32")
    # What `call` runs, with its grids (`explain` gives inference gates).
    grids = [layer._apply(x, training=True)[1] for _ in range(draws)]
    masks = np.concatenate([np.asarray(g["mask"]) for g in grids])
    masks = masks.reshape(draws * batch, -1)  # (samples, tokens)
    n, tokens = masks.shape
    scores = np.asarray(grids[0]["score"])[0].ravel().astype(np.float64)
    keep = np.asarray(grids[0]["keep"])[0].ravel()
    temperature = layer.options.temperature
    assert scores.min() < -1.0 and scores.max() > 4.0
    np.testing.assert_allclose(
        keep, energy.hard_concrete_keep(scores, temperature), rtol=1e-6)
    # Every draw of a token sees the same score: the samples are i.i.d.
    for g in grids:
        np.testing.assert_array_equal(
            np.asarray(g["score"]).reshape(batch, -1),
            np.broadcast_to(scores.astype("float32"), (batch, tokens)))
    # Hoeffding, over all tokens at once (union bound): the empirical
    # P(g > 0) is within eps of its formula with probability 1 - 1e-9.
    eps = np.sqrt(np.log(2 * tokens / 1e-9) / (2 * n))
    np.testing.assert_array_less(np.abs(np.mean(masks > 0, 0) - keep), eps)
    # The whole law (atoms at 0 and 1, the stretched logistic between), by
    # the DKW bound on each token's empirical CDF, same failure probability.
    low, high = ref.STRETCH
    t = np.linspace(0.0, 1.0, 50, endpoint=False)
    s = (t - low) / (high - low)
    cdf = ref.sigmoid(scores[:, None]
                      + temperature * np.log(s / (1.0 - s))[None])
    empirical = np.mean(masks[:, :, None] <= t, axis=0)
    np.testing.assert_array_less(np.abs(empirical - cdf), eps)
    # P(g = 1) = 1 - P(g < 1) = sigmoid(-z - T log((high - 1) / (1 - low))).
    ones = ref.sigmoid(-scores + temperature * np.log((high - 1) / (1 - low)))
    np.testing.assert_array_less(np.abs(np.mean(masks == 1, 0) - ones), eps)


def numpy_loss(x, kernel, bias, noise, cotangent, patch_size, formulation):
    """A scalar of the whole forward pass, for finite differences."""
    if formulation == "coherent":
        _, _, mask, _, loss = ref.coherent_gated_layer(
            x, kernel, bias, patch_size, 0.4, 0.7, 0.7, COHERENT["coupling"],
            COHERENT["mean_field_steps"], COHERENT["neighbour_weights"], noise
        )
    else:
        _, _, mask, _, loss = ref.keeping_cost_layer(
            x, kernel, bias, patch_size, 0.4, 0.7, 0.7, "hard_concrete", noise
        )
    outputs = ref.apply_mask(x, ref.mask_mass_multiplier(mask), patch_size)
    return np.sum(outputs * cotangent) + 3.0 * loss


@pytest.mark.parametrize("formulation", ["keeping_cost", "coherent"])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_gradient_matches_finite_differences(patch_size, formulation):
    x, kernel, bias, noise = case(patch_size, seed=4)
    rng = np.random.default_rng(9)
    cotangent = rng.normal(size=x.shape)
    tensors = [tf.constant(v) for v in (x, kernel, bias)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        outputs, _, loss = energy_kernel.apply_energy_mask(
            *tensors,
            MaskOptions(
                patch_size=patch_size,
                **{**SPARSE, "formulation": formulation}, unary_weight=0.4,
                pairwise_weight=0.7, temperature=0.7,
                **(COHERENT if formulation == "coherent" else {}),
            ),
            noise=noise,
        )
        total = tf.reduce_sum(outputs * cotangent) + 3.0 * loss
    grads = [np.asarray(g, np.float64) for g in tape.gradient(total, tensors)]
    values = [np.asarray(v, np.float64) for v in (x, kernel, bias)]
    step = 1e-5
    for which, index in [(1, i) for i in np.ndindex(kernel.shape)][:8] + [
        (2, ()), (0, (0, 1, 2, 3)), (0, (1, 3, 4, 0))
    ]:
        plus = [v.copy() for v in values]
        minus = [v.copy() for v in values]
        plus[which][index] += step
        minus[which][index] -= step
        numeric = (
            numpy_loss(*plus, noise, cotangent, patch_size, formulation)
            - numpy_loss(*minus, noise, cotangent, patch_size, formulation)
        ) / (2 * step)
        np.testing.assert_allclose(grads[which][index], numeric, rtol=2e-3,
                                   atol=2e-4, err_msg=f"{which} {index}")


@pytest.mark.parametrize("formulation,gate,scaling", SETTINGS)
def test_hand_written_gradient_matches_autodiff(formulation, gate, scaling,
                                                monkeypatch):
    x, kernel, bias, noise = case(2, seed=2)
    rng = np.random.default_rng(5)
    cotangents = [rng.normal(size=x.shape)] + [
        rng.normal(size=(2, 4, 5)) for _ in energy.GRID_KEYS
    ]
    tensors = [tf.constant(v) for v in (x, kernel, bias)]

    def gradients():
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            outputs, grids, loss = energy_kernel.apply_energy_mask(
                *tensors,
                MaskOptions(
                    patch_size=2, formulation=formulation, unary_weight=0.3,
                    pairwise_weight=0.6, temperature=0.8, gate=gate,
                    output_scaling=scaling,
                    **(COHERENT if formulation == "coherent" else {}),
                ),
                noise=noise if gate == "hard_concrete" else None,
            )
            total = tf.reduce_sum(outputs * cotangents[0]) + 2.5 * loss
            for key, cotangent in zip(energy.GRID_KEYS, cotangents[1:]):
                total += tf.reduce_sum(grids[key] * cotangent)
        return tape.gradient(total, tensors)

    hand_written = gradients()
    monkeypatch.setattr(energy_kernel.autodiff, "BACKENDS", ())
    automatic = gradients()
    for name, ours, theirs in zip(("x", "kernel", "bias"), hand_written,
                                  automatic):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5,
                                   err_msg=name)


class SparseConformanceTest(testing.TestCase):
    def run_gated_layer_test(self, mask_kwargs):
        self.run_layer_test(
            EnergyMask,
            init_kwargs={**mask_kwargs, "patch_size": 2, "seed": 3},
            input_shape=(2, 4, 6, 5),
            expected_output_shape=(2, 4, 6, 5),
            expected_num_trainable_weights=2,
            expected_num_seed_generators=1,
            expected_num_losses=1,
            supports_masking=False,
        )

    def test_keeping_cost_hard_concrete_mask_mass(self):
        self.run_gated_layer_test(SPARSE)

    def test_coherent_hard_concrete_mask_mass(self):
        self.run_gated_layer_test(COHERENT_GATED)

    def test_frozen_bias(self):
        self.run_layer_test(
            EnergyMask,
            # The authors' dynamics: their energy, a frozen per-position bias.
            init_kwargs={**presets.mask_kwargs("authors"),
                         "score_bias_trainable": False, "position_bias": True},
            input_shape=(2, 4, 4, 3),
            expected_output_shape=(2, 4, 4, 3),
            expected_num_trainable_weights=1,
            expected_num_non_trainable_weights=1,
            expected_num_losses=1,
            supports_masking=False,
        )


def test_training_samples_inference_is_deterministic_and_binary():
    layer = EnergyMask(**SPARSE, seed=1, score_bias_initializer="zeros")
    x = relu_features((4, 6, 6, 8), seed=0)
    first = np.asarray(layer(x, training=True))
    second = np.asarray(layer(x, training=True))
    assert not np.allclose(first, second)  # fresh noise each call
    inference = [np.asarray(layer(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*inference)
    mask = np.asarray(layer.explain(x)["mask"])
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_seeded_layers_sample_the_same_gates():
    x = relu_features((2, 4, 4, 8), seed=0)
    outputs = [
        np.asarray(EnergyMask(**SPARSE, seed=7, score_bias_initializer="zeros")(
            x, training=True))
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*outputs)


def test_frozen_bias_is_not_trained():
    inputs = keras.Input((4, 4, 3))
    features = keras.layers.Conv2D(8, 1, activation="relu")(inputs)
    mask = EnergyMask.from_preset(
        "authors", score_bias_trainable=False, position_bias=True,
        score_bias_initializer=keras.initializers.Constant(6.0), name="mask")
    pooled = keras.layers.GlobalAveragePooling2D()(mask(features))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    kernel_before = np.asarray(mask.score_kernel).copy()
    model.fit(np.random.rand(16, 4, 4, 3), np.arange(16) % 2, epochs=2,
              verbose=0)
    np.testing.assert_array_equal(mask.score_bias, 6.0)
    # The kernel trains (zero-initialised, it moves off zero).
    assert not np.array_equal(mask.score_kernel, kernel_before)


@pytest.mark.parametrize("mask_kwargs", [SPARSE, COHERENT_GATED],
                         ids=["keeping_cost", "coherent"])
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_matches_float32(policy, mask_kwargs):
    x = relu_features((2, 4, 4, 8), seed=0)
    kwargs = dict(**mask_kwargs, score_kernel_initializer="glorot_uniform",
                  score_bias_initializer="zeros")
    reference = EnergyMask(**kwargs)
    expected = reference.explain(x)
    half = EnergyMask(**kwargs, dtype=policy)
    half.build(x.shape)
    half.set_weights(reference.get_weights())
    outputs = half(x.astype(keras.mixed_precision.Policy(policy).compute_dtype))
    assert keras.backend.standardize_dtype(outputs.dtype) == policy[6:]
    assert half.losses[0].dtype == "float32"
    grids = half.explain(x)
    np.testing.assert_allclose(grids["score"], expected["score"], atol=2e-2)
    agreement = np.mean(np.asarray(grids["mask"]) == np.asarray(expected["mask"]))
    assert agreement > 0.9


def test_jit_compiled_fit_matches_eager():
    x = np.random.default_rng(0).random((16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 3
    losses = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        features = keras.layers.Conv2D(8, 3, padding="same",
                                       activation="relu")(inputs)
        masked = EnergyMask(**SPARSE, seed=0, name="mask")(features)
        pooled = keras.layers.GlobalAveragePooling2D()(masked)
        model = keras.Model(inputs, keras.layers.Dense(3)(pooled))
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), jit_compile=jit)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False,
                            verbose=0)
        losses[jit] = history.history["loss"]
        assert 0.0 <= history.history["mask_kept_fraction"][-1] <= 1.0
    # One seed, so one noise draw: only XLA's rounding differs.
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-3)


def test_keras_file_round_trip_of_a_trained_model(tmp_path):
    # Trained, so that every weight differs from what its initializer
    # gives: a file whose weights did not load would not match.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    features = keras.layers.Conv2D(6, 1, activation="relu")(inputs)
    mask = EnergyMask(**SPARSE, seed=5, score_bias_trainable=False,
                      name="mask")
    pooled = keras.layers.GlobalAveragePooling2D()(mask(features))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    initial = [np.copy(w) for w in model.get_weights()]
    # The frozen bias as a user sets it (the authors' +6 is one such).
    mask.score_bias.assign(-0.5)
    # Two training steps, eager and in plain TensorFlow ops: `fit` would
    # trace the step and compile the layer's XLA kernels, most of this
    # test's time.
    x = relu_features((16, 4, 4, 3), seed=0)
    labels = np.arange(16) % 2
    optimizer = keras.optimizers.Adam()
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True)
    with xla.serving_trace():
        for batch in (slice(0, 8), slice(8, 16)):
            with tf.GradientTape() as tape:
                loss = cross_entropy(
                    labels[batch], model(x[batch], training=True)
                ) + tf.add_n(model.losses)
            variables = model.trainable_variables
            optimizer.apply(tape.gradient(loss, variables), variables)
    weights = model.get_weights()
    assert len(weights) == 6
    for before, after in zip(initial, weights):
        assert not np.array_equal(before, after)
    path = tmp_path / "sparse.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    config = loaded.get_layer("mask").get_config()
    for key, value in {**SPARSE, "seed": 5, "score_bias_trainable": False}.items():
        assert config[key] == value
    for saved, restored in zip(weights, loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, saved)
    # The gates' noise stream too (saved by the layer, not a weight): the
    # loaded model's training calls draw the gates the original's would.
    np.testing.assert_array_equal(
        loaded.get_layer("mask").seed_generator.state,
        mask.seed_generator.state)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("kwargs,argument", [
    (dict(gate="l0"), "gate"),
    (dict(output_scaling="mean"), "output_scaling"),
    (dict(mask_mass_epsilon=0.0), "mask_mass_epsilon"),
    (dict(seed=-1), "seed"),
    (dict(score_bias_trainable="no"), "score_bias_trainable"),
])
def test_bad_arguments_name_layer_and_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"EnergyMask 'bad'.*`{argument}`"):
        EnergyMask(name="bad", **kwargs)
