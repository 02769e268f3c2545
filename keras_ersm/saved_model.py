"""SavedModel export for TensorFlow Serving.

`export(model, path)` writes a SavedModel with two signatures:

* `serving_default`: the model's outputs;
* `explain`: the model's outputs plus, for every `EnergyMask` layer `L`, its
  keep grid `L_keep`, energy grid `L_energy` and applied mask `L_mask`
  (batch, height/p, width/p); for a mask called several times (attached
  after a shared layer), those of each call `i`, `L_call{i}_keep`, ....

The input is named `images` (or as `export`'s `input_name` says; a model
with several inputs names them after its input layers), outputs after the
model's output layers; the batch size is dynamic; floating inputs and
outputs are float32 whatever the dtype policy. The graphs are traced, and
saved, inside `keras_ersm.xla.serving_trace(differentiate_forward=True)`:
the energy kernels as plain TensorFlow ops, as TensorFlow Serving's GPU
images cannot run must-compile (XLA) functions (tensorflow/serving#2214),
without their hand-written gradient (TensorFlow differentiates the served
ops) and without updates of the layers' kept-fraction metrics; the model's
layers are left unchanged.
Loading needs TensorFlow only, not keras_ersm.
"""

import os
import re

import keras

from keras_ersm import compat
from keras_ersm import graph
from keras_ersm import validation
from keras_ersm import xla

SIGNATURES = ("serving_default", "explain")


def _signature_name(name):
    """`name` as a valid signature key: letters, digits, `_`, `.`, `-`,
    starting with a letter, a digit or `.` (TensorFlow's rule for the
    graph's argument names)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).lstrip("_-")
    return name or "tensor"


def _signature_names(names, what, model, advice):
    """`names` as signature keys (`_signature_name`), which must stay
    distinct: one would overwrite another in the signature."""
    names = [_signature_name(name) for name in names]
    if len(set(names)) != len(names):
        raise validation.invalid(
            "`export`", "model", f"a model whose {what} have distinct "
            "signature names (letters, digits, '_', '.', '-')",
            received=f"model '{model.name}', whose {what} have the "
            f"signature names {names}",
            hint=advice,
        )
    return names


# What a signature argument may be called (TensorFlow's rule).
_ARGUMENT_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-]*")


def _input_names(model, input_name):
    """The signature's input names: `[input_name]`, or with `None` the
    input layers' names (as signature keys)."""
    inputs = keras.tree.flatten(model.input)
    if input_name is None:
        return _signature_names(
            [compat.producing_layer(tensor).name for tensor in inputs],
            "input layers", model, "Give them distinct names.",
        )
    if not isinstance(input_name, str) or not _ARGUMENT_NAME.fullmatch(
        input_name
    ):
        raise validation.invalid(
            "`export`", "input_name", "None or a name of letters, digits, "
            "'_', '.' and '-' that starts with a letter, a digit or '.'",
            input_name,
        )
    if len(inputs) != 1:
        raise validation.invalid(
            "`export`", "input_name", f"None for model '{model.name}', "
            f"which has {len(inputs)} inputs (a name names one input)",
            input_name,
            hint="Pass input_name=None to name each input after its input "
            "layer.",
        )
    return [input_name]


def _output_names(model):
    if isinstance(model.output, dict):
        # keras.tree.flatten's order; nested outputs by their path.
        names = [
            "_".join(str(key) for key in path)
            for path, _ in keras.tree.flatten_with_path(model.output)
        ]
    else:
        names = list(model.output_names)
    return _signature_names(
        names, "outputs", model,
        "Give the output layers distinct names, or return a dict of outputs.",
    )


# The token grids of every EnergyMask in the explain signature: its keep
# probabilities, energies, and the mask it applies (for the coherent
# formulation the mean-field mask, not `keep`).
EXPLAIN_GRIDS = ("keep", "energy", "mask")


def _serving_dtype(dtype):
    """float32 for any floating dtype (mixed precision), else `dtype`."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if "float" in dtype else dtype


def export(model, path, *, input_name="images"):
    """Write `model` as a SavedModel for TensorFlow Serving.

    Args:
        model: a functional `keras.Model` with `EnergyMask` layers at its top
            level (as `build_classifier` and `attach` make), any dtype
            policy.
        path: directory to write the SavedModel to. TensorFlow Serving
            expects it to be a numbered version, e.g. `models/ersm/1`.
        input_name: the name of the model's input in both signatures, what
            REST and gRPC clients send the images under (default
            `"images"`, whatever the model's input layer is called: Keras
            numbers unnamed layers per process, `input_layer_2`); letters,
            digits, `_`, `.` and `-`. `None` names every input after its
            input layer (for a model with several inputs).

    Returns:
        The list of signature names written, `["serving_default",
        "explain"]`.

    Example:

    >>> keras_ersm.export(model, "models/ersm/1")
    ['serving_default', 'explain']
    >>> served = tf.saved_model.load("models/ersm/1")
    >>> grids = served.signatures["explain"](images=tf.constant(images))
    >>> grids["energy_mask_keep"].shape  # 8 images, 4x4 tokens
    TensorShape([8, 4, 4])
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "export: writing a SavedModel needs the TensorFlow backend; "
            f"the Keras backend is {keras.backend.backend()!r}. Set "
            "KERAS_BACKEND=tensorflow."
        )
    grids = graph.grid_outputs("`export`", model, EXPLAIN_GRIDS)
    explain_model = keras.Model(
        model.input, {"outputs": model.output, "grids": grids}
    )
    input_names = _input_names(model, input_name)
    output_names = _output_names(model)
    _check_grid_names(model, grids, output_names)
    _save(model, path, _input_specs(model, input_names),
          _SignatureFunctions(model, explain_model, output_names))
    return list(SIGNATURES)


def _check_grid_names(model, grids, output_names):
    """The explain signature's grid names must stay distinct, and differ
    from the outputs'."""
    grid_names = _signature_names(
        [f"{grid_name}_{key}" for grid_name in grids for key in EXPLAIN_GRIDS],
        "EnergyMask grids", model, "Give the EnergyMask layers names that "
        "stay distinct.",
    )
    clashes = sorted(set(grid_names) & set(output_names))
    if clashes:
        raise validation.invalid(
            "`export`", "model", "a model whose output names differ from "
            "the explain signature's grid names",
            received=f"model '{model.name}', whose outputs {clashes} clash "
            "with them",
            hint="Rename those output layers.",
        )


def _input_specs(model, input_names):
    """The signatures' input specs: any batch size, floats as float32."""
    import tensorflow as tf

    return [
        tf.TensorSpec(
            (None,) + tuple(tensor.shape[1:]),
            _serving_dtype(tensor.dtype),
            name=name,
        )
        for tensor, name in zip(keras.tree.flatten(model.input), input_names)
    ]


class _SignatureFunctions:
    """The signatures' Python functions: the flat inputs of the specs to
    the named outputs (float32 for any floating dtype)."""

    def __init__(self, model, explain_model, output_names):
        self.model = model
        self.explain_model = explain_model
        self.output_names = output_names
        self.input_tensors = keras.tree.flatten(model.input)

    def serve(self, *flat):
        """`serving_default`: the model's outputs."""
        return self._named_outputs(
            self.model(self._model_inputs(flat), training=False)
        )

    def explain(self, *flat):
        """`explain`: the model's outputs and every mask's grids."""
        result = self.explain_model(self._model_inputs(flat), training=False)
        named = self._named_outputs(result["outputs"])
        for layer_name, layer_grids in result["grids"].items():
            for key, grid in layer_grids.items():
                named[_signature_name(f"{layer_name}_{key}")] = grid
        return named

    def _model_inputs(self, flat):
        import tensorflow as tf

        cast = [
            tf.cast(value, tensor.dtype)
            for value, tensor in zip(flat, self.input_tensors, strict=True)
        ]
        return keras.tree.pack_sequence_as(self.model.input, cast)

    def _named_outputs(self, outputs):
        import tensorflow as tf

        return {
            name: (tf.cast(value, tf.float32) if value.dtype.is_floating
                   else value)
            for name, value in zip(self.output_names,
                                   keras.tree.flatten(outputs), strict=True)
        }


def _save(model, path, specs, functions):
    """Trace both signatures and write the SavedModel."""
    import tensorflow as tf

    # The save too: it traces functions of its own (see `serving_trace`).
    with xla.serving_trace(differentiate_forward=True):
        signatures = {
            "serving_default": tf.function(
                functions.serve, input_signature=specs, autograph=False
            ).get_concrete_function(),
            "explain": tf.function(
                functions.explain, input_signature=specs, autograph=False
            ).get_concrete_function(),
        }
        module = tf.Module()
        # Track the tf.Variables themselves: through Keras' wrappers they
        # are saved, but TF1-style loaders (TF Serving, saved_model_cli run)
        # find them uninitialised.
        module.model_variables = [
            variable.value for variable in model.variables
        ]
        tf.saved_model.save(module, os.fspath(path), signatures=signatures)


def must_compile_functions(path):
    """Functions of a SavedModel marked must-compile (XLA JIT).

    Args:
        path: a SavedModel directory.

    Returns:
        The sorted names of the functions (and `function/node` call sites
        or graph nodes) of the SavedModel whose `_XlaMustCompile` attribute
        is true; TensorFlow Serving's GPU images cannot run them. `export`
        writes none.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(os.fspath(path), "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    found = set()
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library.function
        for function in library:
            if _must_compile(function.attr):
                found.add(function.signature.name)
            # A call site can carry the attribute too.
            found.update(
                f"{function.signature.name}/{node.name}"
                for node in function.node_def
                if _must_compile(node.attr)
            )
        found.update(
            node.name
            for node in meta_graph.graph_def.node
            if _must_compile(node.attr)
        )
    return sorted(found)


def _must_compile(attributes):
    return "_XlaMustCompile" in attributes and attributes["_XlaMustCompile"].b
