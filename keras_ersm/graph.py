"""Reading a model's graph: its `EnergyMask` layers and their token grids.

What callbacks, the evaluation and the export need to find the masks of a
model and the tensors they are called on:

* `check_functional`: the check that a model is a graph of layer calls.
* `energy_masks`: the `EnergyMask` layers of a model.
* `grid_outputs`: symbolic token grids of every mask, tensors of the
  model's own graph (`mask_model`, `MaskTensorBoard`, `export`).
"""

import keras

from keras_ersm import compat
from keras_ersm import validation
from keras_ersm.energy import GRID_KEYS
from keras_ersm.layers import EnergyMask


def check_functional(caller, model, sequential=False):
    """Raise unless `model` is a functional `keras.Model`: a graph of layer
    calls, which `attach` rewires and the evaluation cuts.

    Args:
        caller: what takes `model`, named in the message: a function in
            backticks ("`attach`") or a class ("MaskTensorBoard").
        model: the argument to check.
        sequential: whether a built Sequential model will do; it holds a
            graph too, but one that `attach` cannot rewire.
    """
    if sequential and isinstance(model, keras.Sequential):
        try:
            model.inputs
        except (AttributeError, ValueError):
            raise validation.invalid(
                caller, "model", "a functional or built Sequential "
                "keras.Model", model, hint="Build it on a keras.Input.",
            ) from None
        return
    expected = ("a functional keras.Model (built with keras.Input and layer "
                "calls)")
    if isinstance(model, keras.Sequential):
        raise validation.invalid(
            caller, "model", expected, model,
            hint="Convert it first: keras.Model(model.inputs, "
            "model.outputs) (build it on a keras.Input so that it has "
            "inputs).",
        )
    if not compat.is_functional(model):
        hint = None
        if isinstance(model, keras.Model):
            hint = ("A subclassed model has no graph of layer calls: rewrite "
                    "it with the functional API, or create a "
                    "keras_ersm.EnergyMask in its __init__ and call it in "
                    "call().")
        raise validation.invalid(caller, "model", expected, model, hint=hint)


def nested_mask_error(caller, model, layer):
    """The `ValueError` for an EnergyMask `layer` inside a nested model of
    `model`: its grid and its cut are not in `model`'s own graph."""
    return validation.invalid(
        caller, "model", "a model whose EnergyMask layers are its own, not "
        "a nested model's",
        received=f"model '{model.name}', with the EnergyMask "
        f"'{layer.name}' inside a nested model",
        hint="Build the model flat (as build_classifier and attach do).",
    )


def energy_masks(model):
    """The `EnergyMask` layers of `model`, nested models included.

    Args:
        model: a `keras.Model`.

    Returns:
        A list of `EnergyMask` layers, in the order of `model.layers`.
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, EnergyMask):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(energy_masks(layer))
    return found


class _TokenGrids(keras.layers.Layer):
    """The token grids of an `EnergyMask` layer as a layer of a model.

    Calls `mask_layer.explain` on its input (the mask layer's own input) and
    returns the selected grids. The grids do not depend on the mask layer's
    metric or loss, and calling this layer updates neither. Private: it holds
    the mask layer itself, so the models built with it (`mask_model`,
    `export`'s explain graph) are not meant to be saved as `.keras` files.

    Args:
        mask_layer: a built `EnergyMask`.
        keys: names of the grids to return, from "score", "keep", "energy"
            and "mask".
        **kwargs: base `Layer` arguments.

    Returns:
        A dict {key: float32 tensor (batch, height / p, width / p)}.
    """

    def __init__(self, mask_layer, keys=("mask",), **kwargs):
        super().__init__(**kwargs)
        unknown = sorted(set(keys) - set(GRID_KEYS))
        if unknown or not keys:
            raise validation.invalid(
                f"_TokenGrids '{self.name}'", "keys",
                f"a non-empty sequence of grid names from {GRID_KEYS}", keys,
            )
        self.mask_layer = mask_layer
        self.keys = tuple(keys)
        # An autocast scope would read the mask layer's float32 weights in
        # the compute dtype (bfloat16 under mixed precision).
        self.autocast = False

    def call(self, inputs):
        grids = self.mask_layer.explain(inputs)
        return {key: grids[key] for key in self.keys}

    def compute_output_spec(self, inputs):
        batch, height, width, _ = inputs.shape
        p = self.mask_layer.options.patch_size
        shape = (
            batch,
            None if height is None else height // p,
            None if width is None else width // p,
        )
        return {key: keras.KerasTensor(shape, "float32") for key in self.keys}


def _mask_inputs(caller, model, layer):
    """{grid name: the tensor `layer` (an EnergyMask of `model`) is called
    on}: the layer's name, or `f"{name}_call{i}"` for each call of a layer
    called several times (e.g. attached after a shared layer)."""
    if layer not in model.layers:
        raise nested_mask_error(caller, model, layer)
    calls = compat.calls_in(model, layer)
    if len(calls) == 1:
        return {layer.name: calls[0].input_tensors[0]}
    return {
        f"{layer.name}_call{index}": call.input_tensors[0]
        for index, call in enumerate(calls)
    }


def grid_outputs(caller, model, keys):
    """Symbolic token grids of every EnergyMask of a functional model.

    Args:
        caller: named in errors: the public function
            calling this, in backticks ("`mask_model`"), or a class
            ("MaskTensorBoard").
        model: a functional `keras.Model` with top-level EnergyMask layers.
        keys: grid names to read, from "score", "keep", "energy", "mask".

    Returns:
        {grid name: {key: KerasTensor (batch, height / p, width / p)}},
        tensors of `model`'s graph, computed from `model.input`; the grid
        name is the mask layer's, or `f"{name}_call{i}"` for the i-th call
        of a mask called several times.
    """
    check_functional(caller, model)
    masks = energy_masks(model)
    if not masks:
        raise validation.invalid(
            caller, "model", "a model with an EnergyMask layer",
            received=f"model '{model.name}', which has no EnergyMask layer",
            hint="Add one with keras_ersm.attach or "
            "keras_ersm.build_classifier.",
        )
    inputs = {}
    for layer in masks:
        for name, tensor in _mask_inputs(caller, model, layer).items():
            if name in inputs:
                raise validation.invalid(
                    caller, "model", "a model whose EnergyMask grids "
                    "have distinct names",
                    received=f"model '{model.name}', with two grids named "
                    f"{name!r}",
                    hint="Rename the EnergyMask layers.",
                )
            inputs[name] = (layer, tensor)
    return {
        name: _TokenGrids(layer, keys, name=f"{name}_grids")(tensor)
        for name, (layer, tensor) in inputs.items()
    }

