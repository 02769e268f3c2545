"""model.fit with EnergyMask layers: XLA, mixed precision, MirroredStrategy."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras
import tensorflow as tf

import keras_ersm
from keras_ersm import recipes

MASKS = ("conv1_energy_mask", "energy_mask")


def small_classifier(freeze_backbone=False, energy_loss_weight=50.0):
    """16x16x3 -> conv1 -> mask -> conv2 -> BN -> mask -> head (3 classes)."""
    # Seeded: the convolutions' initial weights otherwise depend on how much
    # of Keras's global random stream earlier tests used, and with them
    # whether the masks keep a strict subset of the tokens.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                            activation="relu", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    # Random kernels and a zero bias: about half of the tokens are kept, so
    # the kept fractions are informative.
    mask_kwargs = {
        "patch_size": 2,
        "score_kernel_initializer": keras.initializers.RandomNormal(
            stddev=2.0, seed=1),
        "score_bias_initializer": "zeros",
        "energy_loss_weight": energy_loss_weight,
        "unary_weight": 1.0,
        "pairwise_weight": 1.0,
    }
    backbone = keras_ersm.attach(keras.Model(inputs, x), "conv1",
                                 **mask_kwargs)
    return keras_ersm.build_classifier(
        backbone, 3, freeze_backbone=freeze_backbone, **mask_kwargs
    )


def data(examples=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (examples, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, examples).astype("int32")
    return x, y


def dataset(x, y, batch_size=4):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def expected_metrics(model, x, y):
    """Loss and kept fractions recomputed from the layers' own grids."""
    # An eager call: predict() would compile (with XLA under jit_compile).
    probabilities = np.asarray(model(x), "float64")
    cross_entropy = -np.mean(np.log(probabilities[np.arange(len(y)), y]))
    masks = [model.get_layer(name) for name in MASKS]
    features = keras.Model(model.input, [m.input for m in masks])(x)
    energy_loss, fractions = 0.0, {}
    for layer, feature in zip(masks, features):
        grids = {k: np.asarray(v) for k, v in layer.explain(feature).items()}
        # "reference": loss = mean(keep * energy).
        energy_loss += layer.options.energy_loss_weight * np.mean(
            grids["keep"] * grids["energy"])
        fractions[f"{layer.name}_kept_fraction"] = np.mean(grids["mask"] > 0.5)
    return cross_entropy + energy_loss, energy_loss, fractions


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_logs_energy_loss_and_kept_fractions(jit_compile):
    model = small_classifier()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy",
                  jit_compile=jit_compile)
    x, y = data()
    history = model.fit(dataset(x, y), epochs=2, verbose=0)
    for name in MASKS:
        assert len(history.history[f"{name}_kept_fraction"]) == 2

    logged = model.evaluate(dataset(x, y), verbose=0, return_dict=True)
    loss, energy_loss, fractions = expected_metrics(model, x, y)
    assert energy_loss > 0.1 * loss  # the energy loss matters here
    assert logged["loss"] == pytest.approx(loss, rel=1e-4)
    for name, fraction in fractions.items():
        assert 0 < fraction < 1
        assert logged[name] == pytest.approx(fraction, abs=1e-6)


@pytest.fixture
def policy():
    """Set a global dtype policy for one test; always restore float32."""
    try:
        yield keras.mixed_precision.set_global_policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_fit_mixed_bfloat16(policy):
    policy("mixed_bfloat16")
    model = small_classifier()
    assert model.get_layer("energy_mask").compute_dtype == "bfloat16"
    assert model.get_layer("energy_mask").score_kernel.dtype == "float32"
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = data()
    before = model.get_layer("energy_mask").score_kernel.numpy()
    history = model.fit(dataset(x, y), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(
        model.get_layer("energy_mask").score_kernel.numpy(), before)

    logged = model.evaluate(dataset(x, y), verbose=0, return_dict=True)
    loss, _, fractions = expected_metrics(model, x, y)
    # The features are bfloat16; the energy math and the loss are float32.
    assert logged["loss"] == pytest.approx(loss, rel=1e-2)
    for name, fraction in fractions.items():
        assert logged[name] == pytest.approx(fraction, abs=0.05)
    masks = keras_ersm.mask_model(model).predict(x, verbose=0)
    assert masks["energy_mask"].dtype == np.float32


def test_fit_mixed_float16(policy):
    policy("mixed_float16")  # emulated on CPU: keep it tiny
    model = small_classifier()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = data(examples=4)
    history = model.fit(dataset(x, y), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert 0 <= history.history["energy_mask_kept_fraction"][0] <= 1


def test_authors_recipe_trains_only_mask_and_head():
    model = small_classifier(freeze_backbone=True, energy_loss_weight=1.0)
    model.compile(**recipes.authors_recipe(total_steps=4))
    frozen = {w.path: w.numpy() for w in model.weights
              if w.path.split("/")[0] in ("conv1", "conv2", "bn")}
    trained = {w.path: w.numpy() for w in model.trainable_weights}
    assert sorted(trained) == [
        "conv1_energy_mask/score_bias", "conv1_energy_mask/score_kernel",
        "energy_mask/score_bias", "energy_mask/score_kernel",
        "predictions/bias", "predictions/kernel",
    ]
    x, y = data()
    model.fit(dataset(x, y), epochs=1, verbose=0)  # 2 of the 4 steps
    assert int(model.optimizer.iterations) == 2
    # Cosine decay: 1e-3 * (1 + cos(pi * 2 / 4)) / 2.
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)
    for weight in model.weights:
        if weight.path in frozen:  # batch-norm statistics included
            np.testing.assert_array_equal(weight.numpy(), frozen[weight.path])
        if weight.path in trained:
            assert not np.array_equal(weight.numpy(), trained[weight.path])


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    # Two logical CPUs; must run before TensorFlow initialises its devices.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {tests!r})
    import keras
    from test_training import data, dataset, small_classifier

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = small_classifier()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = data()
    history = model.fit(dataset(x, y), epochs=1, verbose=0)
    print(json.dumps({{"replicas": strategy.num_replicas_in_sync,
                      "history": history.history}}))
""")


@pytest.mark.slow
def test_fit_mirrored_strategy_two_cpus():
    tests = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run(
        [sys.executable, "-c", MIRRORED.format(tests=tests)],
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(tests),
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    history = result["history"]
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    # Recorded under the strategy (a metric never updated would read NaN);
    # tests/scaleout compares the values with one device.
    for name in MASKS:
        assert all(0 <= v <= 1 for v in history[f"{name}_kept_fraction"])
