"""Splitting a functional model into a feature extractor and a head."""

import dataclasses

import keras

from keras_ersm import compat
from keras_ersm import graph
from keras_ersm import validation
from keras_ersm.layers import EnergyMask


@dataclasses.dataclass(frozen=True)
class MaskSplit:
    """An ERSM model cut at its `EnergyMask` layer.

    Attributes:
        features: `keras.Model` from the model's input to the mask layer's
            input (the unmasked feature map `f`).
        mask_layer: the `EnergyMask` layer.
        head: `keras.Model` from the mask layer's output (the masked map)
            to the model's output.
    """

    features: keras.Model
    mask_layer: EnergyMask
    head: keras.Model


def _check_one_input_one_output(model, caller):
    """Raise unless `model` is functional (or built Sequential) with one
    input and one output: the graph that `split_at` cuts in two."""
    graph.check_functional(caller, model, sequential=True)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise validation.invalid(
            caller, "model", "a model with one input and one output",
            received=f"model '{model.name}' with {len(model.inputs)} "
            f"inputs and {len(model.outputs)} outputs",
        )


def split_at(model, tensor, caller="`split_at`"):
    """Cuts a functional model at an intermediate tensor.

    Args:
        model: a functional `keras.Model` with one input and one output.
        tensor: a `KerasTensor` of the model's graph through which every
            path from the input to the output passes.
        caller: str, the public function named in error messages, in
            backticks (e.g. "`pxap`").

    Returns:
        `(features, head)`: `features` maps the model's input to `tensor`,
        `head` maps `tensor` to the model's output; `head(features(x))`
        equals `model(x)`.

    Example:

    >>> layer = model.get_layer("conv_last")
    >>> features, head = split_at(model, layer.output)
    >>> tuple(head(features(images)).shape)
    (8, 2)
    """
    _check_one_input_one_output(model, caller)
    features = keras.Model(model.inputs[0], tensor)
    try:
        head = keras.Model(tensor, model.outputs[0])
    except ValueError as error:
        raise validation.invalid(
            caller, "tensor", "a tensor of the model's graph that "
            "every path from its input to its output passes through (no "
            "residual connection may bypass it)",
            received=f"tensor '{tensor.name}' of model '{model.name}'",
            hint=f"Keras said: {error}",
        ) from error
    return features, head


def _called_once(model, layer, caller):
    """The one call (node) of `layer` in `model`'s graph.

    `layer.input` / `layer.output` are those of its first call, which may
    be in another model (a model rebuilt by `attach`, or a cut of one).
    """
    calls = compat.calls_in(model, layer)
    if len(calls) != 1:
        raise validation.invalid(
            caller, "model", f"a model that calls layer "
            f"'{layer.name}' once",
            received=f"model '{model.name}', which calls it {len(calls)} "
            "times",
        )
    return calls[0]


def find_mask_layer(model, name=None):
    """The model's first `EnergyMask` layer, or the one called `name`.

    Args:
        model: a `keras.Model`.
        name: `None`, or the name of an `EnergyMask` layer of the model.

    Returns:
        The `EnergyMask` layer.

    Example:

    >>> find_mask_layer(model).name
    'energy_mask'
    """
    if name is None:
        for layer in model.layers:
            if isinstance(layer, EnergyMask):
                return layer
        nested = graph.energy_masks(model)
        if nested:
            raise graph.nested_mask_error(
                "`find_mask_layer`", model, nested[0]
            )
        raise validation.invalid(
            "`find_mask_layer`", "model", "a model with an EnergyMask layer",
            received=f"model '{model.name}', which has none",
        )
    try:
        layer = model.get_layer(name)
    except ValueError as error:
        for nested in graph.energy_masks(model):
            if nested.name == name:
                raise graph.nested_mask_error(
                    "`find_mask_layer`", model, nested
                ) from error
        raise validation.invalid(
            "`find_mask_layer`", "name", f"None or the name of a layer of "
            f"model '{model.name}'", name,
        ) from error
    if not isinstance(layer, EnergyMask):
        raise validation.invalid(
            "`find_mask_layer`", "name", "None or the name of an EnergyMask "
            f"layer of model '{model.name}'",
            received=f"{name!r}, a {type(layer).__name__}",
        )
    return layer


def split_at_mask(model, mask_layer=None):
    """Cuts an ERSM model around its `EnergyMask` layer.

    Args:
        model: a functional `keras.Model` with one input and one output,
            containing an `EnergyMask` layer that is called once and cuts
            the graph (no connection bypasses it).
        mask_layer: `None` for the first `EnergyMask` layer, or the name of
            one.

    Returns:
        A `MaskSplit`: `head(mask_layer(features(x)))` equals `model(x)`.

    Example:

    >>> split = split_at_mask(model)
    >>> grids = split.mask_layer.explain(split.features(images))
    >>> sorted(grids), tuple(grids["mask"].shape)
    (['energy', 'keep', 'mask', 'score'], (8, 4, 4))
    """
    _check_one_input_one_output(model, "`split_at_mask`")
    layer = find_mask_layer(model, mask_layer)
    call = _called_once(model, layer, "`split_at_mask`")
    features = keras.Model(model.inputs[0], call.input_tensors[0])
    _, head = split_at(model, call.output_tensors[0], caller="`split_at_mask`")
    return MaskSplit(features=features, mask_layer=layer, head=head)


def last_feature_map_layer(model):
    """The last layer of `model` with a 4-D output, e.g. the last conv block.

    Args:
        model: a functional `keras.Model`.

    Returns:
        The layer.

    Example:

    >>> last_feature_map_layer(baseline).name
    'conv_last'
    """
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        outputs = [
            call.output_tensors for call in compat.calls_in(model, layer)
        ]
        if any(len(tensors) == 1 and len(tensors[0].shape) == 4
               for tensors in outputs):
            return layer
    raise validation.invalid(
        "`last_feature_map_layer`", "model", "a model with a layer whose "
        "output is a 4-D feature map",
        received=f"model '{model.name}', which has none",
    )


def split_at_layer(model, layer=None):
    """Cuts a model after a feature-map layer (its output starts the head).

    Args:
        model: a functional `keras.Model` with one input and one output.
        layer: `None` for the last layer with a 4-D output, or a layer name.

    Returns:
        `(features, head)`, as `split_at`.

    Example:

    >>> features, head = split_at_layer(baseline)  # last 4-D feature map
    >>> tuple(features(images).shape)
    (8, 4, 4, 8)
    """
    _check_one_input_one_output(model, "`split_at_layer`")
    if layer is None:
        target = last_feature_map_layer(model)
    else:
        try:
            target = model.get_layer(layer)
        except ValueError as error:
            raise validation.invalid(
                "`split_at_layer`", "layer", "None or the name of a layer "
                f"of model '{model.name}'", layer,
            ) from error
    outputs = _called_once(model, target, "`split_at_layer`").output_tensors
    if len(outputs) != 1 or len(outputs[0].shape) != 4:
        raise validation.invalid(
            "`split_at_layer`", "layer", "None or a layer that outputs a "
            "4-D feature map (batch, height, width, channels)",
            received=f"{layer!r}, whose outputs are {outputs!r}",
        )
    return split_at(model, outputs[0], caller="`split_at_layer`")
