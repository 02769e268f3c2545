"""SavedModel export for TensorFlow Serving.

TensorFlow Serving itself cannot run on the test machines (no container
runtime, no network to pull its image), so these tests check what Serving
relies on instead: the SavedModel's signatures, their names, dtypes and
dynamic batch size; that a process which never imports keras_ersm loads it
and gets the numbers of `model.predict`; that `saved_model_cli` (the tool that
inspects and runs SavedModels the way Serving loads them) lists and runs it;
and that no function in it must be XLA-compiled, which Serving's GPU images
cannot do (tensorflow/serving#2214).
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras
import tensorflow as tf

import keras_ersm
from keras_ersm import graph
from keras_ersm import xla
from keras_ersm.saved_model import must_compile_functions

MASKS = ("conv1_energy_mask", "energy_mask")


def small_classifier():
    """image (16x16x3) -> conv1 -> mask -> conv2 -> mask -> head (3); the
    first mask is the default run's (keeping cost, hard-concrete gates,
    mask-mass scaling), the second a coherent one."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                            activation="relu", name="conv2")(x)
    backbone = keras_ersm.attach(
        keras.Model(inputs, x), "conv1", patch_size=2,
        score_kernel_initializer="random_normal",
        score_bias_initializer="zeros", formulation="keeping_cost",
        gate="hard_concrete", output_scaling="mask_mass",
    )
    return keras_ersm.build_classifier(
        backbone, 3, freeze_backbone=False, patch_size=1,
        formulation="coherent", score_kernel_initializer="random_normal",
    )


def images(batch, seed=0):
    return np.random.default_rng(seed).uniform(
        0, 1, (batch, 16, 16, 3)).astype("float32")


def expected_grids_of(model, name, x):
    """The `explain()` grids of mask `name` computed by the Keras layer."""
    layer = model.get_layer(name)
    features = keras.Model(model.input, layer.input)(x)
    return {k: np.asarray(v) for k, v in layer.explain(features).items()}


def expected_grids(model, x):
    """{mask: explain() grids} for both masks of `small_classifier`."""
    return {name: expected_grids_of(model, name, x) for name in MASKS}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = small_classifier()
    path = tmp_path_factory.mktemp("saved") / "ersm" / "1"
    assert keras_ersm.export(model, path) == ["serving_default", "explain"]
    # The function is the package's `export`; its module has its own name.
    assert keras_ersm.export is keras_ersm.saved_model.export
    return model, path


# Runs with keras_ersm unimportable and the worktree off sys.path.
LOADER = textwrap.dedent("""
    import importlib.abc, json, sys

    class Forbid(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "keras_ersm":
                raise ImportError("keras_ersm must not be imported")

    sys.meta_path.insert(0, Forbid())
    sys.path = [p for p in sys.path if p not in ("", {worktree!r})]
    import numpy as np
    import tensorflow as tf

    served = tf.saved_model.load({path!r})
    x = tf.constant(np.load({inputs!r}))
    outputs = {{}}
    input_names = {{}}
    for signature in ("serving_default", "explain"):
        function = served.signatures[signature]
        input_names[signature] = list(function.structured_input_signature[1])
        for key, value in function(images=x).items():
            outputs[signature + "/" + key] = value.numpy()
    np.savez({outputs!r}, **outputs)
    print(json.dumps(input_names))
    print(json.dumps(sorted(m for m in sys.modules
                            if m.split(".")[0] == "keras_ersm")))
""")


@pytest.mark.slow
def test_loads_and_matches_without_keras_ersm(exported, tmp_path):
    model, path = exported
    x = images(5, seed=1)  # a batch size never traced: dynamic batch
    np.save(tmp_path / "x.npy", x)
    script = LOADER.format(
        worktree=os.getcwd(), path=str(path),
        inputs=str(tmp_path / "x.npy"), outputs=str(tmp_path / "out.npz"),
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        cwd=tmp_path, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    *_, input_names, imported = run.stdout.strip().splitlines()
    assert json.loads(imported) == []
    # The serving input's name is `export`'s default, not the model's input
    # layer's ("image").
    assert json.loads(input_names) == {"serving_default": ["images"],
                                       "explain": ["images"]}
    served = dict(np.load(tmp_path / "out.npz"))

    predictions = model.predict(x, verbose=0)
    grids = expected_grids(model, x)
    keys = {"serving_default/predictions", "explain/predictions"}
    for name in MASKS:
        keys |= {f"explain/{name}_{key}" for key in ("keep", "energy", "mask")}
    assert set(served) == keys
    np.testing.assert_allclose(
        served["serving_default/predictions"], predictions, atol=1e-5)
    np.testing.assert_allclose(
        served["explain/predictions"], predictions, atol=1e-5)
    for name in MASKS:
        for key in ("keep", "energy", "mask"):
            assert served[f"explain/{name}_{key}"].dtype == np.float32
            np.testing.assert_allclose(
                served[f"explain/{name}_{key}"], grids[name][key],
                rtol=1e-4, atol=1e-7)
    assert served["explain/conv1_energy_mask_keep"].shape == (5, 8, 8)
    assert served["explain/energy_mask_keep"].shape == (5, 8, 8)


def test_signatures_are_named_with_dynamic_batch(exported):
    model, path = exported
    served = tf.saved_model.load(str(path))
    assert sorted(served.signatures) == ["explain", "serving_default"]
    for function in served.signatures.values():
        _, inputs = function.structured_input_signature
        assert inputs == {"images": tf.TensorSpec(
            (None, 16, 16, 3), tf.float32, name="images")}
    assert served.signatures["serving_default"].structured_outputs[
        "predictions"].shape.as_list() == [None, 3]


def test_explain_signature_returns_the_layers_grids(exported):
    # In process (the slow test loads it without keras_ersm): every grid of
    # both masks, and for the coherent mask the applied mean-field mask,
    # which differs from keep.
    model, path = exported
    explain = tf.saved_model.load(str(path)).signatures["explain"]
    x = images(3, seed=2)
    served = explain(images=tf.constant(x))
    grids = expected_grids(model, x)
    for name in MASKS:
        for key in ("keep", "energy", "mask"):
            np.testing.assert_allclose(served[f"{name}_{key}"],
                                       grids[name][key], rtol=1e-4, atol=1e-7)
    coherent = grids["energy_mask"]
    assert np.max(np.abs(coherent["mask"] - coherent["keep"])) > 1e-3


def test_a_served_models_gradient_is_the_keras_models(tmp_path):
    # The SavedModel is written without the layers' hand-written gradients
    # (`tf.saved_model.save` would trace them, most of an export's time); a
    # gradient through it, for saliency say, is TensorFlow's of the forward
    # ops: the same numbers. Sigmoid gates, whose masks have a gradient at
    # inference (hard-concrete gates are then 0 or 1).
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    for formulation in ("reference", "coherent"):
        x = keras_ersm.EnergyMask.from_preset(
            "authors", formulation=formulation, patch_size=2,
            score_kernel_initializer=keras.initializers.RandomNormal(
                stddev=3.0, seed=0),
        )(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(x)))
    keras_ersm.export(model, tmp_path / "model")
    loaded = tf.saved_model.load(str(tmp_path / "model"))  # owns variables
    served = loaded.signatures["serving_default"]
    x = tf.constant(images(4, seed=3))
    weights = tf.constant(np.random.default_rng(1).normal(size=(4, 3)),
                          "float32")
    gradients = []
    for function in (lambda x: model(x, training=False),
                     lambda x: next(iter(served(images=x).values()))):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(function(x) * weights)
        gradients.append(tape.gradient(loss, x).numpy())
    assert np.abs(gradients[0]).max() > 0
    np.testing.assert_allclose(gradients[1], gradients[0], rtol=1e-4,
                               atol=1e-6)


def graph_ops(path):
    """Op types in a SavedModel's graph and functions, its restore aside."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    (graph,) = [meta.graph_def for meta in saved_model.meta_graphs]
    nodes = list(graph.node)
    for function in graph.library.function:
        # Loading assigns the saved values to the variables.
        if "_traced_restore" not in function.signature.name:
            nodes.extend(function.node_def)
    return {node.op for node in nodes}


def mask_state(model):
    """Each mask's config and kept-fraction counts."""
    return {
        name: (
            model.get_layer(name).get_config(),
            float(model.get_layer(name).kept_fraction.total),
            float(model.get_layer(name).kept_fraction.count),
        )
        for name in MASKS
    }


def test_export_leaves_the_layers_and_metrics_alone(tmp_path):
    model = small_classifier()
    model(images(2))
    before = mask_state(model)
    assert all(count > 0 for _, _, count in before.values())
    keras_ersm.export(model, tmp_path / "model")
    # The served graphs read variables and never write them, and nothing in
    # them must be XLA-compiled.
    ops = graph_ops(tmp_path / "model")
    assert "ReadVariableOp" in ops
    assert not ops & {"AssignAddVariableOp", "AssignVariableOp"}
    assert must_compile_functions(tmp_path / "model") == []
    # Tracing neither updated the kept-fraction metrics nor changed the
    # layers (their config, `track_kept_fraction` in it), which still count.
    assert mask_state(model) == before
    assert not xla.tracing_for_serving()
    model(images(2))
    for name in MASKS:
        assert float(model.get_layer(name).kept_fraction.count) > (
            before[name][2]
        )


def test_export_saves_inside_the_scope_and_leaves_it_on_error(
    tmp_path, monkeypatch
):
    model = small_classifier()
    before = mask_state(model)
    seen = []

    def failing_save(*args, **kwargs):
        # The save may trace functions: inside the scope, with the layers
        # as the user made them.
        seen.append((
            xla.tracing_for_serving(),
            [model.get_layer(name).track_kept_fraction for name in MASKS],
        ))
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        keras_ersm.export(model, tmp_path / "model")
    assert seen == [(True, [True, True])]
    assert not xla.tracing_for_serving()
    assert mask_state(model) == before


def test_no_function_must_be_xla_compiled(exported, tmp_path, monkeypatch):
    model, path = exported
    assert must_compile_functions(path) == []
    # Control: the check finds the layer's XLA kernel in a SavedModel traced
    # outside serving_trace().
    monkeypatch.setattr(xla, "serving_trace",
                        lambda **_: contextlib.nullcontext())
    keras_ersm.export(model, tmp_path / "xla")
    assert must_compile_functions(tmp_path / "xla")


def saved_model_cli(*args):
    tool = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_saved_model_cli_shows_and_runs(exported, tmp_path):
    model, path = exported
    shown = saved_model_cli("show", "--dir", str(path), "--all")
    assert "signature_def['serving_default']" in shown
    assert "signature_def['explain']" in shown
    assert "outputs['conv1_energy_mask_keep']" in shown
    assert "inputs['images']" in shown

    x = images(2, seed=2)
    np.save(tmp_path / "x.npy", x)
    saved_model_cli(
        "run", "--dir", str(path), "--tag_set", "serve",
        "--signature_def", "serving_default",
        "--inputs", f"images={tmp_path / 'x.npy'}",
        "--outdir", str(tmp_path / "out"),
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "predictions.npy"), model(x), atol=1e-5,
    )


@pytest.mark.parametrize("mask_kwargs", [
    dict(formulation="reference"), dict(formulation="coherent"),
    dict(formulation="keeping_cost", gate="hard_concrete",
         output_scaling="mask_mass", score_bias_initializer="zeros"),
    dict(formulation="coherent", gate="hard_concrete",
         output_scaling="mask_mass", neighbour_weights="affinity",
         coupling=0.2, mask_mass_epsilon=0.03,
         score_bias_initializer="zeros"),
])
def test_a_variable_image_size_is_served_at_any_size(mask_kwargs, tmp_path):
    inputs = keras.Input((None, None, 3), name="image")
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                                   name="conv")(inputs)
    model = keras_ersm.build_classifier(
        keras.Model(inputs, features), 3, freeze_backbone=False,
        patch_size=2, score_kernel_initializer="random_normal", **mask_kwargs,
    )
    keras_ersm.export(model, tmp_path / "any_size")
    served = tf.saved_model.load(str(tmp_path / "any_size"))
    _, signature_inputs = served.signatures["explain"].structured_input_signature
    assert signature_inputs["images"].shape.as_list() == [None, None, None, 3]
    # 12x40: the Keras call splits its rows into Gram blocks; the served
    # graph, traced without a width, does not.
    for height, width in [(8, 8), (12, 40)]:
        x = np.random.default_rng(width).uniform(
            0, 1, (2, height, width, 3)).astype("float32")
        np.testing.assert_allclose(
            served.signatures["serving_default"](images=x)["predictions"],
            model(x), atol=1e-5,
        )
        mask = served.signatures["explain"](images=x)["energy_mask_mask"]
        expected = expected_grids_of(model, "energy_mask", x)["mask"]
        np.testing.assert_allclose(mask, expected, rtol=1e-4, atol=1e-7)
        assert mask.shape == (2, height // 2, width // 2)


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_exports_float32(mixed_bfloat16, tmp_path):
    model = small_classifier()
    assert model.get_layer("conv2").compute_dtype == "bfloat16"
    keras_ersm.export(model, tmp_path / "mixed")
    served = tf.saved_model.load(str(tmp_path / "mixed"))
    x = images(2)
    for signature in ("serving_default", "explain"):
        function = served.signatures[signature]
        _, inputs = function.structured_input_signature
        assert inputs["images"].dtype == tf.float32
        outputs = function(images=tf.constant(x))
        assert {value.dtype for value in outputs.values()} == {tf.float32}
    np.testing.assert_allclose(
        served.signatures["serving_default"](images=x)["predictions"],
        model(x), atol=1e-5,
    )


def test_export_errors(tmp_path):
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="`export`: argument `model` must "
                       "be a model with an EnergyMask layer; received model "
                       "'.*', which has no EnergyMask layer. Add one with "
                       "keras_ersm.attach"):
        keras_ersm.export(plain, tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
    assert graph.energy_masks(plain) == []

    x = keras_ersm.EnergyMask(name="energy_mask")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="energy_mask_keep")(x)
    clashing = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"`export`: argument `model` must "
                       r"be a model whose output names differ from the "
                       r"explain signature's grid names; received model "
                       r"'.*', whose outputs \['energy_mask_keep'\] clash "
                       r"with them\. Rename those output layers\."):
        keras_ersm.export(clashing, tmp_path / "clash")

    # Two outputs of one layer share its name: one would overwrite the
    # other in the signature.
    pair = keras.layers.Lambda(lambda t: (t, 2.0 * t), name="two")(x)
    twins = keras.Model(inputs, list(pair))
    with pytest.raises(ValueError, match=r"`export`: argument `model` must "
                       r"be a model whose outputs have distinct signature "
                       r"names .*; received model '.*', whose outputs have "
                       r"the signature names \['two', 'two'\]\. Give the "
                       r"output layers distinct names"):
        keras_ersm.export(twins, tmp_path / "twins")
    assert not (tmp_path / "twins").exists()

    # Grid names that coincide once made signature keys.
    y = keras_ersm.EnergyMask(name="m>1")(inputs)
    y = keras_ersm.EnergyMask(name="m_1")(y)
    grids = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(y))
    with pytest.raises(ValueError, match=r"`export`: argument `model` must "
                       r"be a model whose EnergyMask grids have distinct "
                       r"signature names .*; received model '.*', whose "
                       r"EnergyMask grids have the signature names "
                       r"\[.*'m_1_keep', 'm_1_energy', 'm_1_mask', "
                       r"'m_1_keep'"):
        keras_ersm.export(grids, tmp_path / "grids")
    assert not (tmp_path / "grids").exists()


def test_nested_outputs_and_odd_input_names_are_all_served(tmp_path):
    inputs = keras.Input((8, 8, 3), name="_image")
    masked = keras_ersm.EnergyMask(name="mask")(
        keras.layers.Conv2D(4, 1)(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    heads = [keras.layers.Dense(units, name=f"d{units}")(pooled)
             for units in (2, 3, 4)]
    model = keras.Model(inputs, {"heads": heads[:2], "aux": heads[2]})
    keras_ersm.export(model, tmp_path / "nested", input_name=None)
    serve = tf.saved_model.load(str(tmp_path / "nested")).signatures[
        "serving_default"]
    # TensorFlow's argument names cannot start with "_".
    _, signature_inputs = serve.structured_input_signature
    assert list(signature_inputs) == ["image"]
    x = images(2)[:, :8, :8]
    served = serve(image=tf.constant(x))
    expected = model(x)
    assert sorted(served) == ["aux", "heads_0", "heads_1"]
    for name, value in (("heads_0", expected["heads"][0]),
                        ("heads_1", expected["heads"][1]),
                        ("aux", expected["aux"])):
        np.testing.assert_allclose(served[name], value, atol=1e-6)


def test_attached_models_keep_their_input_and_output_names(tmp_path):
    keras.Input((4,))  # advances Keras's count of tensor names
    inputs = keras.Input((8, 8, 3))
    segmentation = keras.layers.Conv2D(2, 1, name="seg")(inputs)
    classes = keras.layers.Dense(3, name="cls")(
        keras.layers.GlobalAveragePooling2D()(segmentation))
    base = keras.Model(inputs, [segmentation, classes])
    x = images(2)[:, :8, :8]
    targets = {"seg": np.zeros((2, 8, 8, 2)), "cls": np.zeros((2, 3))}
    # Compiled before attaching too: the clone's compiled loss is re-keyed.
    base.compile("sgd", loss={"seg": "mse", "cls": "mse"})
    keras_ersm.attach(base, "seg").fit(x, targets, verbose=0)
    attached = keras_ersm.attach(base, "seg")
    assert attached.layers[0].name == base.layers[0].name
    assert attached.output_names == ["seg", "cls"]
    attached.compile("sgd", loss={"seg": "mse", "cls": "mse"})
    attached.fit(x, targets, verbose=0)
    keras_ersm.export(attached, tmp_path / "attached")
    serve = tf.saved_model.load(str(tmp_path / "attached")).signatures[
        "serving_default"]
    _, signature_inputs = serve.structured_input_signature
    # The input layer's name is a per-process counter; the signature's is
    # the stable default.
    assert base.layers[0].name.startswith("input_layer")
    assert list(signature_inputs) == ["images"]
    assert sorted(serve.structured_outputs) == ["cls", "seg"]


def test_the_input_name_is_an_argument(tmp_path):
    model = small_classifier()
    keras_ersm.export(model, tmp_path / "pixels", input_name="pixels")
    served = tf.saved_model.load(str(tmp_path / "pixels"))
    for function in served.signatures.values():
        _, inputs = function.structured_input_signature
        assert list(inputs) == ["pixels"]
    keras_ersm.export(model, tmp_path / "layer", input_name=None)
    _, inputs = tf.saved_model.load(str(tmp_path / "layer")).signatures[
        "explain"].structured_input_signature
    assert list(inputs) == ["image"]  # the input layer's name
    for bad in ("", "_images", "my images", 3):
        with pytest.raises(ValueError, match=r"`export`: argument "
                           r"`input_name` must be None or a name of "
                           r"letters, digits.*; received "
                           + re.escape(f"{bad!r}.")):
            keras_ersm.export(model, tmp_path / "bad", input_name=bad)
    assert not (tmp_path / "bad").exists()


def test_several_inputs_are_named_after_their_layers(tmp_path):
    images = keras.Input((8, 8, 3), name="rgb")
    depth = keras.Input((8, 8, 1), name="depth")
    x = keras.layers.Concatenate()([images, depth])
    x = keras_ersm.EnergyMask(name="mask")(keras.layers.Conv2D(4, 1)(x))
    model = keras.Model([images, depth],
                        keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match=r"`export`: argument `input_name` "
                       r"must be None for model '.*', which has 2 inputs "
                       r"\(a name names one input\); received 'images'\. "
                       r"Pass input_name=None"):
        keras_ersm.export(model, tmp_path / "two")
    keras_ersm.export(model, tmp_path / "two", input_name=None)
    _, inputs = tf.saved_model.load(str(tmp_path / "two")).signatures[
        "serving_default"].structured_input_signature
    assert sorted(inputs) == ["depth", "rgb"]
