"""Splitting a functional model into a feature extractor and a head."""

import dataclasses

import keras

from keras_ersm import compat
from keras_ersm import models
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


def _check_functional(model, caller):
    try:
        graph = (model.inputs, model.outputs)
    except (AttributeError, ValueError):
        graph = None
    if not isinstance(model, keras.Model) or not graph or not all(graph):
        raise ValueError(
            f"`{caller}` expects a functional (or built Sequential) "
            f"`keras.Model`. Received: model={model!r}"
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"`{caller}` expects a model with one input and one output. "
            f"Received a model with {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs"
        )


def split_at(model, tensor, caller="split_at"):
    """Cuts a functional model at an intermediate tensor.

    Args:
        model: a functional `keras.Model` with one input and one output.
        tensor: a `KerasTensor` of the model's graph through which every
            path from the input to the output passes.
        caller: str, the public function's name, used in error messages.

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
    _check_functional(model, caller)
    features = keras.Model(model.inputs[0], tensor)
    try:
        head = keras.Model(tensor, model.outputs[0])
    except ValueError as error:
        raise ValueError(
            f"`{caller}` could not cut model '{model.name}' at tensor "
            f"'{tensor.name}': the cut must separate the graph, i.e. every "
            "path from the input to the output must pass through it (no "
            "residual connection may bypass it). "
            f"Keras said: {error}"
        ) from error
    return features, head


def _called_once(model, layer, caller):
    """The one call (node) of `layer` in `model`'s graph.

    `layer.input` / `layer.output` are those of its first call, which may
    be in another model (a model rebuilt by `attach`, or a cut of one).
    """
    calls = compat.calls_in(model, layer)
    if len(calls) != 1:
        raise ValueError(
            f"`{caller}` expects the layer '{layer.name}' to be called once "
            f"in model '{model.name}'; it is called {len(calls)} times."
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
        nested = models.energy_masks(model)
        if nested:
            raise _nested_mask_error(model, nested[0])
        raise ValueError(
            f"`find_mask_layer` expects a model containing an `EnergyMask` "
            f"layer; model '{model.name}' has none."
        )
    try:
        layer = model.get_layer(name)
    except ValueError as error:
        for nested in models.energy_masks(model):
            if nested.name == name:
                raise _nested_mask_error(model, nested) from error
        raise ValueError(
            f"`find_mask_layer` found no layer named {name!r} in model "
            f"'{model.name}'. Received: name={name!r}"
        ) from error
    if not isinstance(layer, EnergyMask):
        raise ValueError(
            f"`find_mask_layer` expects `name` to name an `EnergyMask` "
            f"layer; layer {name!r} of model '{model.name}' is a "
            f"{type(layer).__name__}. Received: name={name!r}"
        )
    return layer


def _nested_mask_error(model, layer):
    return ValueError(
        f"`find_mask_layer` found the EnergyMask '{layer.name}' inside a "
        f"nested model of '{model.name}': the evaluation cuts the model's "
        "own graph at its mask layer. Build the model flat (as "
        "build_classifier and attach do)."
    )


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
    _check_functional(model, "split_at_mask")
    layer = find_mask_layer(model, mask_layer)
    call = _called_once(model, layer, "split_at_mask")
    features = keras.Model(model.inputs[0], call.input_tensors[0])
    _, head = split_at(model, call.output_tensors[0], caller="split_at_mask")
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
    raise ValueError(
        f"`last_feature_map_layer` expects a model with a layer whose output "
        f"is a 4-D feature map; model '{model.name}' has none."
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
    _check_functional(model, "split_at_layer")
    if layer is None:
        target = last_feature_map_layer(model)
    else:
        try:
            target = model.get_layer(layer)
        except ValueError as error:
            raise ValueError(
                f"`split_at_layer` found no layer named {layer!r} in model "
                f"'{model.name}'. Received: layer={layer!r}"
            ) from error
    outputs = _called_once(model, target, "split_at_layer").output_tensors
    if len(outputs) != 1 or len(outputs[0].shape) != 4:
        raise ValueError(
            f"`split_at_layer` expects `layer` to output a 4-D feature map "
            f"(batch, height, width, channels); layer '{target.name}' "
            f"outputs {outputs!r}. Received: layer={layer!r}"
        )
    return split_at(model, outputs[0], caller="split_at_layer")
