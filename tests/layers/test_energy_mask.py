"""The EnergyMask layer: conformance, parity, dtypes, XLA, serialisation."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src import testing

from conftest import FIXTURE_CASES
from conftest import load_reference_case
from keras_ersm import EnergyMask
from keras_ersm import energy_kernel
from keras_ersm import presets
from keras_ersm import xla

RTOL, ATOL = 1e-4, 1e-5


def relu_features(shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * np.maximum(rng.normal(size=shape), 0.0)).astype("float32")


def small_model(formulation="reference", **mask_kwargs):
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(
        inputs
    )
    masked = EnergyMask.from_preset("authors", formulation=formulation, name="mask", **mask_kwargs)(
        features
    )
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    return keras.Model(inputs, keras.layers.Dense(3)(pooled))


class EnergyMaskConformanceTest(testing.TestCase):
    """Keras's own layer harness (serialisation, symbolic and eager calls,
    a training step, mixed precision), with exact weight and loss counts."""

    def run_conformance(self, init_kwargs, input_shape, num_losses=1):
        self.run_layer_test(
            EnergyMask,
            init_kwargs=init_kwargs,
            input_shape=input_shape,
            expected_output_shape=input_shape,
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            expected_num_losses=num_losses,
            supports_masking=False,
        )

    def test_defaults(self):
        self.run_conformance({"patch_size": 2, "unary_weight": 0.1,
                              "seed": 0}, (2, 4, 6, 5))

    def test_reference(self):
        self.run_conformance({**presets.mask_kwargs("authors"),
                              "patch_size": 2, "unary_weight": 0.1},
                             (2, 4, 6, 5))

    def test_coherent_affinity(self):
        self.run_conformance({"formulation": "coherent",
                              "neighbour_weights": "affinity",
                              "mean_field_steps": 2, "seed": 0}, (2, 3, 5, 4))

    def test_position_bias_without_loss(self):
        # The authors' per-position bias, on their energy.
        self.run_conformance({**presets.mask_kwargs("authors"),
                              "position_bias": True,
                              "energy_loss_weight": 0.0}, (2, 4, 4, 3),
                             num_losses=0)

    def test_position_bias_on_the_default_energy(self):
        self.run_conformance({"position_bias": True, "seed": 0},
                             (2, 4, 4, 3))


def load_fixture_layer(data, **kwargs):
    layer = EnergyMask.from_preset(
        "authors",
        patch_size=int(data["patch_size"]),
        unary_weight=float(data["lambda_u"]),
        pairwise_weight=float(data["gamma_p"]),
        temperature=float(data["temperature"]),
        position_bias=True,
        **kwargs,
    )
    layer.build(data["x_nhwc"].shape)
    layer.score_kernel.assign(data["w_ppc"])
    layer.score_bias.assign(data["b_grid"])
    return layer


@pytest.mark.parametrize("case", FIXTURE_CASES)
@pytest.mark.parametrize("jit", [False, True])
def test_layer_matches_authors_fixture(case, jit):
    data = load_reference_case(case)
    layer = load_fixture_layer(data)
    x = tf.constant(data["x_nhwc"])

    def loss_and_gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x)
            (reg,) = layer.losses
            loss = tf.reduce_mean(tf.square(outputs)) + reg
        grad_x, grad_kernel = tape.gradient(
            loss, [x, layer.score_kernel.value]
        )
        return outputs, reg, grad_x, grad_kernel

    if jit:
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)
    outputs, reg, grad_x, grad_kernel = loss_and_gradients(x)
    grids = layer.explain(x)
    for key, value in {
        "y_nhwc": outputs,
        "reg": reg,
        "grad_x_nhwc": grad_x,
        "grad_w_ppc": grad_kernel,
        "z": grids["score"],
        "keep_prob": grids["keep"],
        "energy": grids["energy"],
    }.items():
        np.testing.assert_allclose(
            np.asarray(value), data[key], rtol=RTOL, atol=ATOL, err_msg=key
        )


def test_position_bias_receives_gradient():
    data = load_reference_case("p1_square")
    layer = load_fixture_layer(data)
    with tf.GradientTape() as tape:
        layer(data["x_nhwc"])
        loss = layer.losses[0]
    grad = tape.gradient(loss, layer.score_bias.value)
    assert grad is not None and np.all(np.abs(np.asarray(grad)) > 0)


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_training_starts_with_most_tokens_kept(formulation):
    layer = EnergyMask.from_preset("authors", formulation=formulation)
    grids = layer.explain(relu_features((4, 6, 6, 32)))
    # Zero kernel, bias -logit(0.95): every token starts at keep 0.95.
    np.testing.assert_allclose(grids["keep"], 0.95, rtol=1e-6)
    assert np.all(np.asarray(grids["mask"]) > 0.9)


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_explain_returns_token_grids_and_the_applied_mask(formulation):
    layer = EnergyMask.from_preset(
        "authors", formulation=formulation,
        patch_size=2,
        score_kernel_initializer=keras.initializers.RandomNormal(seed=1),
        score_bias_initializer="zeros",
    )
    x = relu_features((3, 8, 6, 4))
    grids = layer.explain(x)
    assert set(grids) == {"score", "keep", "energy", "mask"}
    for value in grids.values():
        assert tuple(value.shape) == (3, 4, 3)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
    upsampled = np.repeat(np.repeat(np.asarray(grids["mask"]), 2, 1), 2, 2)
    np.testing.assert_allclose(
        layer(x), x * upsampled[..., None], rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_regularisation_loss_scaled_and_disabled(formulation):
    x = relu_features((2, 4, 4, 8))
    base = EnergyMask.from_preset("authors", formulation=formulation, unary_weight=0.5)
    doubled = EnergyMask.from_preset(
        "authors", formulation=formulation, unary_weight=0.5, energy_loss_weight=2.0
    )
    off = EnergyMask.from_preset(
        "authors", formulation=formulation, unary_weight=0.5, energy_loss_weight=0.0
    )
    for layer in (base, doubled, off):
        layer(x)
    assert len(off.losses) == 0
    assert float(base.losses[0]) > 0
    np.testing.assert_allclose(
        float(doubled.losses[0]), 2 * float(base.losses[0]), rtol=1e-6
    )


@pytest.mark.parametrize(
    "policy", ["float32", "mixed_bfloat16", "mixed_float16"]
)
@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_mixed_precision_matches_float32(policy, formulation):
    # 2048 channels of activations as large as 1e3: sums of squares reach
    # ~1e9, far beyond float16's 65504, so the energy math must be float32.
    x = relu_features((2, 4, 4, 2048), scale=300.0)
    x = np.minimum(x, 1e3)
    init = dict(
        formulation=formulation,
        score_kernel_initializer=keras.initializers.RandomNormal(
            stddev=0.05, seed=3
        ),
        score_bias_initializer="zeros",
    )
    reference = EnergyMask(**init)
    expected = np.asarray(reference(x))
    expected_loss = float(reference.losses[0])

    layer = EnergyMask(dtype=policy, **init)
    outputs = layer(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == (
        layer.compute_dtype
    )
    assert keras.backend.standardize_dtype(layer.losses[0].dtype) == "float32"
    assert layer.score_kernel.dtype == "float32"
    outputs = np.asarray(tf.cast(outputs, "float32"))
    assert np.all(np.isfinite(outputs))
    tolerance = {"float32": 1e-6, "mixed_bfloat16": 1e-2, "mixed_float16": 2e-3}
    np.testing.assert_allclose(
        outputs, expected, rtol=tolerance[policy], atol=1e-3
    )
    np.testing.assert_allclose(
        float(layer.losses[0]), expected_loss, rtol=tolerance[policy]
    )


def _training_step_graph(layer, x, plain):
    """The graph of a forward+backward step, traced in a plain tf.function."""

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x)
            loss = tf.add_n(layer.losses)
        return tape.gradient([outputs, loss], [x] + layer.trainable_weights)

    if plain:
        with xla.serving_trace():
            return step.get_concrete_function(x).graph.as_graph_def()
    return step.get_concrete_function(x).graph.as_graph_def()


def _op_types(graph_def):
    """Op types of the top-level graph and of its must-compile functions."""
    top = {node.op for node in graph_def.node}
    compiled = set()
    for function in graph_def.library.function:
        attr = function.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            compiled |= {node.op for node in function.node_def}
    return top, compiled


def test_energy_kernels_are_xla_compiled():
    # In a plain graph (model.fit on CPU), the token-grid math and the
    # statistics' gradient run as must-compile (XLA) functions, the
    # matrix products and the masking as ordinary ops; under serving_trace()
    # (exported graphs) nothing must be compiled.
    layer = EnergyMask()
    x = tf.constant(relu_features((2, 4, 4, 8)))
    top, compiled = _op_types(_training_step_graph(layer, x, plain=False))
    assert "Softplus" in compiled and "Sigmoid" in compiled  # grid math
    assert "GatherV2" in compiled  # the fused backward pass
    assert "Softplus" not in top
    assert "Einsum" in top  # the statistics (Gram matrices)

    top, compiled = _op_types(_training_step_graph(layer, x, plain=True))
    assert not compiled


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_runs_inside_jit_compiled_function_and_model(formulation):
    layer = EnergyMask.from_preset("authors", formulation=formulation, patch_size=2)
    x = relu_features((2, 4, 4, 8))
    eager = np.asarray(layer(x))
    jitted = tf.function(layer, jit_compile=True)
    np.testing.assert_allclose(jitted(x), eager, rtol=1e-6, atol=1e-6)

    model = small_model(formulation)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    images = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32")
    history = model.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_input_is_a_parameter_of_a_jit_compiled_training_step(formulation):
    # Regression: the layer's own must-compile kernel, nested in an
    # XLA-compiled step under a gradient tape, made TensorFlow compile the
    # input as a constant (constant folding at compile time and a recompile
    # for every new batch). The step's HLO must take x and u as parameters.
    x = tf.random.uniform((2, 4, 4, 8))
    u = tf.random.uniform((2, 4, 4, 8))
    hlo = _jit_compiled_step_hlo(EnergyMask.from_preset("authors", formulation=formulation), x, u,
                                 stage="hlo")
    entry = next(line for line in hlo.splitlines() if line.startswith("ENTRY"))
    parameters = entry.split("->")[0]
    assert parameters.count("f32[2,4,4,8]") == 2, entry


@pytest.mark.parametrize("patch_size", [1, 2])
def test_jit_compiled_step_writes_no_sliced_copy_of_the_map(patch_size):
    # XLA copies a sliced operand of a matrix product: pairing the pixel
    # rows with the rows p below as the slices rows[:-p], rows[p:] of the
    # (B * H, W, C) row stack wrote two map-sized copies of shape
    # (B * H - p, W, C); one shifted copy of the whole stack replaces them.
    # (Maps of more than `MAX_IMAGE_GRAM_PIXELS` pixels pair rows.)
    entry = _optimized_step_entry(EnergyMask(patch_size=patch_size),
                                  (2, 12, 6, 8))
    assert "f32[24,6,8]" in entry  # the shifted copy of the row stack
    assert f"f32[{24 - patch_size},6,8]" not in entry


@pytest.mark.parametrize("patch_size", [1, 2])
def test_jit_compiled_step_copies_no_rows_of_a_small_map(patch_size):
    # Up to 8x8 pixels all products come from one Gram matrix per image,
    # read where the map lies: neither the shifted copy nor a slice.
    entry = _optimized_step_entry(EnergyMask(patch_size=patch_size),
                                  (2, 8, 8, 16))
    assert "f32[2,64,64]" in entry  # the Gram matrices
    assert "f32[16,8,16]" not in entry
    assert f"f32[{16 - patch_size},8,16]" not in entry


@pytest.mark.parametrize("chunk, written", [(None, False), (64, True)])
def test_jit_compiled_step_writes_no_products_across_gram_blocks(
    monkeypatch, chunk, written
):
    # Rows of 32 pixels are split into Gram blocks of 16; the products of
    # the pixels at the blocks' edges, (B, H, 1, 1, C) here, are reduced
    # over chunks of 32 channels, which XLA's CPU compiler reduces as it
    # multiplies. The control reduces all 64 channels at once and finds
    # the products written out.
    if chunk is not None:
        monkeypatch.setattr(energy_kernel, "CHANNEL_CHUNK", chunk)
    entry = _optimized_step_entry(EnergyMask(), (2, 4, 32, 64))
    assert ("f32[2,4,1,1,64]" in entry) == written


@pytest.mark.parametrize("chunk, written", [(None, False), (64, True)])
@pytest.mark.parametrize("reduction", ["mask_gradient", "squared_norms"])
def test_token_reductions_write_no_products(monkeypatch, reduction, chunk,
                                            written):
    # The mask gradient (u * x) and the squared norms (x * x) are summed
    # over each token's channels in chunks of 32, which XLA's CPU compiler
    # reduces as it multiplies; the control sums all 64 channels at once
    # and finds the (B, H, W, C) products written out first.
    if chunk is not None:
        monkeypatch.setattr(energy_kernel, "CHANNEL_CHUNK", chunk)
    x = tf.random.uniform((2, 4, 4, 64))
    u = tf.random.uniform((2, 4, 4, 64))
    if reduction == "mask_gradient":
        function = lambda x, u: energy_kernel._mask_gradient(
            x, u, patch_size=2
        )
        expected = x * u
    else:
        function = lambda x, u: energy_kernel._squared_norms(x, patch_size=2)
        expected = x * x
    reduce = tf.function(function, jit_compile=True)
    np.testing.assert_allclose(
        reduce(x, u),
        tf.reduce_sum(tf.reshape(expected, (2, 2, 2, 2, 2, 64)), (2, 4, 5)),
        rtol=1e-5,
    )
    hlo = reduce.experimental_get_compiler_ir(x, u)(stage="optimized_hlo")
    entry = hlo[hlo.index("\nENTRY"):]
    buffers = [line for line in entry.splitlines()
               if "= f32[2,4,4,64]" in line and "parameter(" not in line]
    assert bool(buffers) == written, buffers


def _optimized_step_entry(layer, shape):
    """The entry computation of the optimised HLO of a compiled step on
    random inputs of `shape`: the buffers XLA writes (fused computations,
    whose intermediates it does not write, come before it)."""
    x = tf.random.uniform(shape)
    u = tf.random.uniform(shape)
    hlo = _jit_compiled_step_hlo(layer, x, u, stage="optimized_hlo")
    return hlo[hlo.index("\nENTRY"):]


def _jit_compiled_step_hlo(layer, x, u, stage):
    """HLO of an XLA-compiled forward+backward step through `layer`."""

    @tf.function(jit_compile=True)
    def step(x, u):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.add_n(layer.losses)
        return tape.gradient(
            [y, loss], [x], output_gradients=[u, tf.constant(1.0)]
        )

    return step.experimental_get_compiler_ir(x, u)(stage=stage)


def test_no_kept_fraction_logged_without_tracking():
    model = small_model(track_kept_fraction=False)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32")
    history = model.fit(images, np.arange(8) % 3, epochs=1, verbose=0)
    assert sorted(history.history) == ["loss"]


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_kept_fraction_in_fit_history_and_evaluate(formulation):
    # Seeds the convolution: with this bias the masks keep some tokens and
    # drop others (checked below).
    keras.utils.set_random_seed(0)
    model = small_model(
        formulation,
        unary_weight=1.0,
        coupling=0.25,
        score_bias_initializer=keras.initializers.Constant(1.5),
        score_kernel_initializer=keras.initializers.RandomNormal(
            stddev=2.0, seed=2
        ),
    )
    # Learning rate 0: the weights, and so every batch's mask, stay those
    # of the start; the logged fraction of an epoch (the metric is reset
    # per epoch and averages every token of every batch) is then the
    # fraction of tokens with mask > 0.5 over the whole data set.
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = np.random.default_rng(0).random((16, 8, 8, 3)).astype("float32")
    labels = np.arange(16) % 3
    layer = model.get_layer("mask")
    features = model.get_layer(index=1)(images)
    grids = layer.explain(features)
    mask = np.asarray(grids["mask"])
    expected = np.mean(mask > 0.5)
    # Neither all nor no tokens kept, and not the mean mask value; for
    # "coherent" the applied mask, not keep, decides.
    assert 0.1 < expected < 0.9
    assert abs(expected - mask.mean()) > 0.05
    if formulation == "coherent":
        assert abs(expected - np.mean(np.asarray(grids["keep"]) > 0.5)) > 0.05

    # Batches of 6, 6 and 4 images: a mean of per-batch fractions would
    # weigh the last batch's tokens more.
    history = model.fit(images, labels, batch_size=6, epochs=2, verbose=0)
    np.testing.assert_allclose(
        history.history["mask_kept_fraction"], [expected] * 2, rtol=1e-6
    )

    results = model.evaluate(images, labels, verbose=0, return_dict=True)
    np.testing.assert_allclose(results["mask_kept_fraction"], expected)
    # The logged loss includes the energy loss.
    logits = model(images)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True
    )(labels, logits)
    np.testing.assert_allclose(
        results["loss"], float(cross_entropy) + float(model.losses[0]),
        rtol=1e-5,
    )


@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_dynamic_spatial_dimensions(formulation):
    inputs = keras.Input((None, None, 6))
    model = keras.Model(
        inputs, EnergyMask.from_preset("authors", formulation=formulation, patch_size=2)(inputs)
    )
    for height, width in [(4, 6), (8, 2)]:
        x = relu_features((2, height, width, 6))
        assert model(x).shape == (2, height, width, 6)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_traced_with_unknown_height_and_width(formulation, patch_size, jit):
    # What an export with a variable image size, or `predict` once it has
    # relaxed its shapes, traces: H and W unknown, so no Gram blocks.
    layer = EnergyMask.from_preset(
        "authors", formulation=formulation, patch_size=patch_size,
        neighbour_weights="affinity",
        score_kernel_initializer=keras.initializers.RandomNormal(seed=2),
    )
    layer.build((None, None, None, 6))

    def values_and_gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y) + tf.add_n(layer.losses)
        return [y] + tape.gradient(loss, [x] + layer.trainable_weights)

    traced = tf.function(
        values_and_gradients, jit_compile=jit,
        input_signature=[tf.TensorSpec((None, None, None, 6))],
    )
    # 36 columns: the eager call splits rows into Gram blocks of 12. XLA
    # compiles each size anew (minutes for this one on a CPU), and the
    # trace it compiles is the one checked without it.
    sizes = [(4, 6), (8, 2)] + ([] if jit else [(20, 36)])
    for height, width in sizes:
        x = tf.constant(relu_features((2, height, width, 6), seed=width))
        for got, expected in zip(traced(x), values_and_gradients(x)):
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"formulation": "coherent", "neighbour_weights": "affinity",
         "patch_size": 2, "coupling": 1.5, "mean_field_steps": 4},
        {"position_bias": True, "temperature": 2.0, "unary_weight": 0.3},
    ],
)
def test_keras_file_round_trip(tmp_path, kwargs):
    inputs = keras.Input((4, 4, 5))
    outputs = EnergyMask(
        name="mask",
        score_kernel_initializer=keras.initializers.RandomNormal(seed=4),
        **kwargs,
    )(inputs)
    model = keras.Model(inputs, outputs)
    # Weights no initializer would give (a per-position bias varies): a
    # file that saved none would load freshly initialised ones.
    rng = np.random.default_rng(7)
    original = model.get_layer("mask")
    for weight in original.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    x = relu_features((2, 4, 4, 5))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(restored(x), model(x))
    layer = restored.get_layer("mask")
    for loaded, saved in zip(layer.get_weights(), original.get_weights()):
        np.testing.assert_array_equal(loaded, saved)
    assert len(layer.weights) == len(original.weights) == 2
    assert isinstance(layer, EnergyMask)
    assert layer.get_config() == model.get_layer("mask").get_config()
    assert keras.saving.get_registered_name(EnergyMask) == (
        "keras_ersm>EnergyMask"
    )


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 1.5}, "patch_size"),
        ({"formulation": "paper"}, "formulation"),
        ({"unary_weight": -1.0}, "unary_weight"),
        ({"pairwise_weight": -0.1}, "pairwise_weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"energy_loss_weight": -1.0}, "energy_loss_weight"),
        ({"mean_field_steps": -1}, "mean_field_steps"),
        ({"coupling": -0.5}, "coupling"),
        ({"damping": 0.0}, "damping"),
        ({"damping": 1.5}, "damping"),
        ({"neighbour_weights": "cosine"}, "neighbour_weights"),
        ({"position_bias": "yes"}, "position_bias"),
        ({"unary_weight": float("nan")}, "unary_weight"),
        ({"unary_weight": float("inf")}, "unary_weight"),
        ({"temperature": float("inf")}, "temperature"),
        ({"coupling": float("inf")}, "coupling"),
        # Would compare elementwise and be stored as an array.
        ({"formulation": np.array("reference")}, "formulation"),
        ({"neighbour_weights": np.array("uniform")}, "neighbour_weights"),
        # Would cast the masked map to integers.
        ({"dtype": "int32"}, "dtype"),
        ({"score_kernel_initializer": -3.0}, "score_kernel_initializer"),
        ({"score_bias_initializer": "zero_s"}, "score_bias_initializer"),
    ],
)
def test_bad_arguments_name_layer_and_argument(kwargs, argument):
    with pytest.raises(ValueError) as error:
        EnergyMask(name="my_mask", **kwargs)
    message = str(error.value)
    assert "my_mask" in message and f"`{argument}" in message
    assert "must be" in message


@pytest.mark.parametrize(
    "shape, layer_kwargs, expected",
    [
        ((None, 8, 8), {},
         "must be of rank 4 (batch, height, width, channels); received "
         "shape (None, 8, 8)."),
        ((None, 4, 4, 4, 3), {}, "must be of rank 4"),
        ((None, 5, 4, 3), {"patch_size": 2},
         "argument `patch_size` must be an integer that divides the height "
         "and width of the input (5 x 4); received 2."),
        ((None, 4, 6, 3), {"patch_size": 4},
         "divides the height and width of the input (4 x 6); received 4."),
        ((None, None, 4, 3), {"position_bias": True},
         "must be of static height and width with position_bias=True; "
         "received shape (None, None, 4, 3). Use position_bias=False"),
        ((None, 4, 4, None), {},
         "must be of known channels; received shape (None, 4, 4, None)."),
        ((None, 0, 4, 3), {}, "must be of height and width >= 1; received "
         "shape (None, 0, 4, 3)."),
    ],
)
def test_bad_input_shapes(shape, layer_kwargs, expected):
    layer = EnergyMask(name="my_mask", **layer_kwargs)
    with pytest.raises(ValueError, match="^EnergyMask 'my_mask': argument "
                       "`") as error:
        layer(keras.Input(batch_shape=shape))
    assert expected in str(error.value)


def test_numpy_arguments_are_stored_as_python_values():
    layer = EnergyMask(formulation=np.str_("coherent"),
                       position_bias=np.True_, track_kept_fraction=np.False_)
    config = layer.get_config()
    assert type(config["formulation"]) is str
    assert config["position_bias"] is True
    assert config["track_kept_fraction"] is False


def test_none_initializers_are_the_defaults():
    layer = EnergyMask(score_kernel_initializer=None,
                       score_bias_initializer=None)
    layer.build((None, 4, 4, 3))
    np.testing.assert_array_equal(layer.score_kernel.numpy(), 0.0)
    # keep = sigmoid(-b / T) = 0.95 at the default T = 2/3.
    assert float(layer.score_bias.numpy()) == pytest.approx(
        -2 / 3 * np.log(0.95 / 0.05))


def test_explain_refuses_a_symbolic_input():
    with pytest.raises(ValueError, match=r"EnergyMask 'my_mask': argument "
                       r"`inputs` must be a concrete tensor \(`explain`\); "
                       r"received a symbolic KerasTensor\. .*"
                       r"keras_ersm.mask_model"):
        EnergyMask(name="my_mask").explain(keras.Input((4, 4, 3)))


def test_calls_after_build_must_match_the_built_weights():
    layer = EnergyMask(name="my_mask", patch_size=2)
    layer(keras.Input((4, 4, 8)))
    with pytest.raises(ValueError, match="my_mask.*8 channels"):
        layer(np.ones((1, 4, 4, 5), "float32"))
    with pytest.raises(ValueError, match="my_mask.*`patch_size` must be an "
                       "integer that divides"):
        layer(np.ones((1, 6, 5, 8), "float32"))
    with pytest.raises(ValueError, match="my_mask.*8 channels"):
        layer.explain(np.ones((1, 4, 4, 5), "float32"))
    # A scalar bias takes any grid; a per-position bias only its own.
    assert layer(np.ones((1, 8, 6, 8), "float32")).shape == (1, 8, 6, 8)
    positional = EnergyMask(name="positional", position_bias=True)
    positional(keras.Input((4, 4, 8)))
    with pytest.raises(ValueError,
                       match=r"positional.*token grid \(4, 4\) that"):
        positional(np.ones((1, 8, 8, 8), "float32"))
    with pytest.raises(ValueError,
                       match=r"positional.*token grid \(4, 4\) that"):
        positional(np.ones((1, 4, 1, 8), "float32"))


@pytest.mark.parametrize("jit", [False, True])
def test_a_size_known_only_when_run_is_checked_too(jit):
    # Traced with H and W unknown, a patch size that does not divide them
    # must fail, not fold the extra rows into other images.
    layer = EnergyMask(name="my_mask", patch_size=2)
    layer.build((None, None, None, 3))
    traced = tf.function(
        layer, jit_compile=jit,
        input_signature=[tf.TensorSpec((None, None, None, 3))],
    )
    assert traced(relu_features((6, 8, 6, 3))).shape == (6, 8, 6, 3)
    for batch in (6, 2):
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            traced(relu_features((batch, 7, 8, 3)))
        if jit:  # XLA drops the check: a reshape named for it fails.
            assert (f"Input to reshape is a tensor with {batch * 168} "
                    f"values, but the requested shape has {batch * 144}"
                    ) in str(error.value)
            assert ("/EnergyMask_my_mask_patch_size_2_must_divide_the_"
                    "input_height_and_width}}") in str(error.value)
        else:
            assert ("EnergyMask layer my_mask: argument `patch_size` must "
                    "be an integer that divides the height and width of the "
                    "input; received 2 for an input of shape] "
                    f"[{batch} 7 8 3]") in str(error.value)


@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("formulation", ["reference", "coherent"])
def test_an_empty_batch_gives_an_empty_output_and_gradient(formulation,
                                                           patch_size):
    # E.g. a replica's share of a last, partial batch.
    layer = EnergyMask.from_preset("authors", formulation=formulation, patch_size=patch_size,
                       neighbour_weights="affinity")
    for shape in ((0, 4, 4, 3), (0, 12, 20, 3)):  # one Gram / Gram blocks
        x = tf.zeros(shape)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        assert y.shape == shape
        gradients = tape.gradient(y, [x] + layer.trainable_weights)
        assert gradients[0].shape == shape
        np.testing.assert_array_equal(gradients[1], 0.0)
        # Adds nothing to the loss (a NaN would poison the whole step).
        assert float(layer.losses[-1]) == 0.0


def test_a_float64_floatx_fits_with_a_float64_loss():
    keras.config.set_floatx("float64")
    try:
        model = small_model()
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(np.random.rand(4, 8, 8, 3), np.arange(4) % 3, verbose=0)
        assert keras.backend.standardize_dtype(model.losses[0].dtype) == (
            "float64")
        assert model.get_layer("mask").score_kernel.dtype == "float32"
    finally:
        keras.config.set_floatx("float32")


def test_channels_first_maps_are_refused():
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match="my_mask': argument "
                           "`data_format` must be 'channels_last'.*received "
                           "None with 'channels_first'.*pass "
                           "data_format='channels_last'"):
            EnergyMask(name="my_mask")(keras.Input((16, 8, 8)))
        # Channels-last maps under the global setting, said explicitly.
        layer = EnergyMask(data_format="channels_last", patch_size=2)
        assert layer(np.ones((1, 4, 6, 3), "float32")).shape == (1, 4, 6, 3)
        assert EnergyMask.from_config(layer.get_config()).data_format == (
            "channels_last")
    finally:
        keras.config.set_image_data_format("channels_last")
    with pytest.raises(ValueError, match="argument `data_format` must be one "
                       "of \\(None, 'channels_last'\\); received "
                       "'channels_first'"):
        EnergyMask(data_format="channels_first")


def test_integer_input_is_rejected():
    layer = EnergyMask(name="my_mask")
    with pytest.raises(ValueError, match="my_mask.*floating-point"):
        layer(keras.Input((4, 4, 3), dtype="int32"))
    with pytest.raises(ValueError, match="my_mask.*floating-point"):
        layer(np.ones((1, 4, 4, 3), "int32"))
